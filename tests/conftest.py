"""Fixtures (thin wrappers over tests/helpers.py) and the test environment."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if not torch.cuda.is_available():
    # the Triton kernel runs on CPU tensors in Triton's interpreter, which must be on before
    # anything imports triton (lightning does)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests import helpers


@pytest.fixture
def sparse_checkpoint(tmp_path):
    """`helpers.sparse_checkpoint` in the test's folder."""
    return helpers.sparse_checkpoint(tmp_path)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small, busy CPU more threads make the tiny fits much slower."""
    with helpers.torch_threads(1):
        yield


@pytest.fixture
def registries():
    """Registrations made by the test are undone afterwards (`helpers.restored_registries`)."""
    with helpers.restored_registries():
        yield


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory; any download attempt fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights must never be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path
