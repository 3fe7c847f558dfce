"""Checkpoint writes are atomic; truncated or foreign files are refused by name."""

from __future__ import annotations

import pytest
import torch

from lightning_mtl.checkpoint_io import AtomicCheckpointIO, CheckpointError
from lightning_mtl.pipelines.fit import build_cli
from tests.helpers import ROOT, tiny_datamodule, tiny_module, tiny_trainer


def test_a_save_killed_halfway_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def dies_halfway(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a kill mid-write looks like to this process

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no partial file is left"


def test_resuming_from_a_truncated_checkpoint_names_it(sparse_checkpoint, tmp_path):
    module, path = sparse_checkpoint
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    trainer = tiny_trainer(max_epochs=2, plugins=[AtomicCheckpointIO()])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt cannot be read: it is truncated"):
        trainer.fit(module, tiny_datamodule(), ckpt_path=truncated)


def test_a_file_without_a_state_dict_is_not_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": "not a lightning checkpoint"}, path)
    with pytest.raises(
        CheckpointError, match=r"is not a Lightning checkpoint \(no state_dict\).*load_compacted"
    ):
        AtomicCheckpointIO().load_checkpoint(path)


def test_the_cli_writes_checkpoints_atomically(tmp_path):
    cli = build_cli(
        [
            "--config", str(ROOT / "experiments" / "synthetic.yaml"),
            "--run.root", str(tmp_path),
            "--run.logger", "csv",
            "--data.init_args.root", str(tmp_path / "data"),
        ],
        run=False,
    )  # fmt: skip
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_compacted_model_file_is_named_as_such(sparse_checkpoint, tmp_path):
    from lightning_mtl.models.compacted import save_compacted
    from lightning_mtl.sparsity import compact

    module, _ = sparse_checkpoint
    model = module.model.eval()
    report = compact(model, torch.rand(1, 3, 32, 32))
    save_compacted(model, tmp_path / "model.pt", spec=module.model_spec, plan=report.plan)
    with pytest.raises(
        CheckpointError,
        match=r"is not a Lightning checkpoint \(a compacted model\).*load_compacted",
    ):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "model.pt")
    torch.save(model, tmp_path / "pickled.pt")  # what lightning-mtl compact wrote before
    with pytest.raises(CheckpointError, match=r"holds a pickled model.*load_compacted"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "pickled.pt")


TASKS_DIFFER = r"tasks: checkpoint \['seg', 'depth', 'normal'\], this module \['seg', 'depth'\]"
WIDTH_DIFFERS = r"backbone_options: checkpoint \{'width': 8"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"tasks": ["seg", "depth"]}, TASKS_DIFFER),
        ({"backbone_options": {"width": 16, "layers": [1, 1, 1, 1]}}, WIDTH_DIFFERS),
    ],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["spec", "hyperparameters-only"])
def test_resuming_into_another_architecture_says_what_differs(
    sparse_checkpoint, tmp_path, overrides, match, legacy
):
    """Also for a checkpoint written before checkpoints held the `ModelSpec`: its
    hyperparameters say the architecture."""
    _, path = sparse_checkpoint
    if legacy:
        checkpoint = torch.load(path, weights_only=False)
        del checkpoint["model_spec"]
        path = tmp_path / "legacy.ckpt"
        torch.save(checkpoint, path)
    data = tiny_datamodule()
    module = tiny_module(data, **overrides)
    trainer = tiny_trainer(tmp_path, max_epochs=2)
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, data, ckpt_path=path)


def test_resuming_with_another_tap_output_says_so(tmp_path):
    data = tiny_datamodule()
    taps = {"seg": "layer3.0.conv1", "depth": "layer1.0.conv2", "normal": "layer2.0.conv1"}
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(tiny_module(data, taps=taps), data)
    trainer.save_checkpoint(tmp_path / "conv.ckpt")
    module = tiny_module(data, taps=taps, tap_output="block")
    with pytest.raises(ValueError, match=r"tap_output: checkpoint 'conv', this module 'block'"):
        tiny_trainer(tmp_path, max_epochs=2).fit(module, data, ckpt_path=tmp_path / "conv.ckpt")
