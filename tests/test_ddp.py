"""The pipeline under Lightning's DDP on CPU (2 processes, gloo): every rank holds the same Z, U, masks and weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from callbacks import NxMSparsifyCallback


def test_ddp_ranks_agree(tmp_path: Path) -> None:
    job = Path(__file__).resolve().parent / "ddp_job.py"
    result = subprocess.run([sys.executable, str(job), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["admm"]["zstep_count"] == 3 and set(rank0["admm"]["z"]) == {"net.0", "net.2"}
    for key in ("z", "u", "mask"):
        for name, tensor in rank0["admm"][key].items():
            assert torch.equal(tensor, rank1["admm"][key][name]), (key, name)
    assert set(rank0["masks"]) == {"net.0", "net.2"}
    assert all(torch.equal(mask, rank1["masks"][name]) for name, mask in rank0["masks"].items())
    assert all(torch.equal(w, rank1["weights"][name]) for name, w in rank0["weights"].items())
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("last*.ckpt")) == ["last.ckpt"]  # one checkpoint, from rank 0
    assert (
        result.stdout.count("HardPruneCallback: pruned 2 layers") + result.stderr.count("HardPruneCallback: pruned 2 layers") == 1
    )


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_strategies_are_refused(strategy: str) -> None:
    class FakeStrategy:
        pass

    FakeStrategy.__name__ = {"fsdp": "FSDPStrategy", "deepspeed": "DeepSpeedStrategy"}[strategy]

    class FakeTrainer:
        pass

    trainer = FakeTrainer()
    trainer.strategy = FakeStrategy()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="shards"):
        NxMSparsifyCallback("2:4").setup(trainer, torch.nn.Module(), "fit")  # type: ignore[arg-type]
