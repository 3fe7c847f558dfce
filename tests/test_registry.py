"""One `Registry` for everything chosen by name: register, lookup errors that list the choices."""

from __future__ import annotations

from typing import Literal

import pytest

from lightning_mtl import (
    list_backbones,
    list_heads,
    list_prox_operators,
    list_tasks,
    list_weightings,
)
from lightning_mtl.models.backbone import BACKBONES
from lightning_mtl.models.heads import HEADS
from lightning_mtl.registry import Registry, check_choice
from lightning_mtl.sparsity.operators import PROX_OPERATORS
from lightning_mtl.tasks import TASK_REGISTRY
from lightning_mtl.weighting import WEIGHTINGS


def test_register_get_names_and_mapping():
    registry: Registry[int] = Registry("widget")
    assert registry.register("a", 1) == 1

    @registry.register("b")
    def b() -> int:
        return 2

    assert registry.names() == ["a", "b"]
    assert registry.get("b") is b and registry["a"] == 1
    assert "a" in registry and len(registry) == 2 and list(registry) == ["a", "b"]
    registry.register("a", 1)  # the same entry again is harmless
    assert registry.unregister("a") == 1 and registry.names() == ["b"]


def test_errors_list_the_choices():
    registry: Registry[int] = Registry("widget")
    registry.register("a", 1)
    with pytest.raises(ValueError, match=r"unknown widget 'z'; choose one of \['a'\]"):
        registry.get("z")
    with pytest.raises(KeyError, match="choose one of"):
        registry["z"]
    with pytest.raises(ValueError, match="widget 'a' is already registered to 1"):
        registry.register("a", 2)
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("", 3)
    with pytest.raises(ValueError, match="unknown widget"):
        registry.unregister("z")


@pytest.mark.parametrize(
    ("registry", "lister", "builtin"),
    [
        (TASK_REGISTRY, list_tasks, ["seg", "depth", "normal", "edge", "binary"]),
        (WEIGHTINGS, list_weightings, ["equal", "uncertainty"]),
        (HEADS, list_heads, ["dense", "classification"]),
        (BACKBONES, list_backbones, ["resnet18", "resnet34", "resnet50", "resnet101"]),
        (PROX_OPERATORS, list_prox_operators, ["group_lasso", "l1"]),
    ],
    ids=["tasks", "weightings", "heads", "backbones", "prox operators"],
)
def test_every_choice_by_name_is_a_registry(registry, lister, builtin):
    assert isinstance(registry, Registry)
    assert set(builtin) <= set(lister()) and lister() == registry.names()
    with pytest.raises(ValueError, match=r"choose one of \["):
        registry.get("no-such-name")


def test_check_choice_names_the_option_the_value_and_the_literals_values():
    Colour = Literal["red", "green"]
    check_choice("colour", "green", Colour)
    with pytest.raises(ValueError, match=r"unknown colour 'blue'; allowed: \['red', 'green'\]"):
        check_choice("colour", "blue", Colour)
    with pytest.raises(TypeError, match="must be a Literal type"):
        check_choice("colour", "red", ("red", "green"))
