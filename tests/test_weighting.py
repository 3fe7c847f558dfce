"""Loss weightings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lightning_mtl.weighting import (
    EqualWeighting,
    LossWeighting,
    UncertaintyWeighting,
    build_weighting,
    register_weighting,
)

KEYS = ("seg", "depth")


def _losses(seg: float = 2.0, depth: float = 0.5) -> dict[str, Tensor]:
    return {"seg": torch.tensor(seg), "depth": torch.tensor(depth)}


def test_equal_is_the_sum() -> None:
    weighting = EqualWeighting(KEYS)
    assert weighting(_losses()).item() == pytest.approx(2.5)
    assert {k: w.item() for k, w in weighting.weights().items()} == {"seg": 1.0, "depth": 1.0}
    assert list(weighting.parameters()) == []


def test_uncertainty_values_by_hand() -> None:
    weighting = UncertaintyWeighting(KEYS)
    assert weighting(_losses()).item() == pytest.approx(2.5)  # s = 0: plain sum
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([1.0, -0.5]))
    expected = math.exp(-1.0) * 2.0 + 1.0 + math.exp(0.5) * 0.5 - 0.5
    assert weighting(_losses()).item() == pytest.approx(expected)
    weights = weighting.weights()
    assert weights["seg"].item() == pytest.approx(math.exp(-1.0))
    assert weights["depth"].item() == pytest.approx(math.exp(0.5))
    assert not any(w.requires_grad for w in weights.values())


def test_uncertainty_gradients_match_calculus() -> None:
    weighting = UncertaintyWeighting(KEYS)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.3, -0.2]))
    losses = {k: v.requires_grad_() for k, v in _losses().items()}
    weighting(losses).backward()
    s = torch.tensor([0.3, -0.2])
    loss = torch.tensor([2.0, 0.5])
    torch.testing.assert_close(weighting.log_vars.grad, -torch.exp(-s) * loss + 1)
    torch.testing.assert_close(losses["seg"].grad, torch.exp(-s[0]))  # d/dL = exp(-s)


def test_uncertainty_log_vars_are_optimised() -> None:
    weighting = UncertaintyWeighting(KEYS)
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.1)
    weighting(_losses()).backward()
    optimizer.step()
    # d/ds = 1 - L: s_seg grows (L = 2 > 1, weight falls), s_depth shrinks (L = 0.5 < 1)
    torch.testing.assert_close(weighting.log_vars.detach(), torch.tensor([0.1, -0.05]))


@pytest.mark.parametrize("cls", [EqualWeighting, UncertaintyWeighting])
def test_task_key_mismatch(cls: type[LossWeighting]) -> None:
    weighting = cls(KEYS)
    with pytest.raises(ValueError, match=r"missing \['depth'\]"):
        weighting({"seg": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"unexpected \['edge'\]"):
        weighting({**_losses(), "edge": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="scalars"):
        weighting({"seg": torch.ones(3), "depth": torch.tensor(1.0)})


def test_task_keys_validated() -> None:
    with pytest.raises(ValueError, match="distinct"):
        EqualWeighting(["seg", "seg"])
    with pytest.raises(ValueError, match="non-empty"):
        UncertaintyWeighting([])


@pytest.mark.usefixtures("registries")
def test_build_and_register() -> None:
    assert isinstance(build_weighting("equal", KEYS), EqualWeighting)
    assert isinstance(build_weighting("uncertainty", KEYS), UncertaintyWeighting)
    with pytest.raises(ValueError, match=r"\['equal', 'uncertainty'\]"):
        build_weighting("dwa", KEYS)

    @register_weighting("max")
    class MaxWeighting(EqualWeighting):
        def combine(self, losses: Tensor) -> Tensor:
            return losses.max()

    assert build_weighting("max", KEYS)(_losses()).item() == pytest.approx(2.0)
