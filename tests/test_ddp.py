"""The pipeline under Lightning's DDP on CPU (2 processes, gloo): every rank holds the same Z, U, masks and weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from callbacks import NxMSparsifyCallback
from nxm_lightning.sparsity.verify import verify

BERT_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")  # fmt: skip


@pytest.mark.parametrize("distill", [False, True], ids=["toy", "distillation"])
def test_ddp_ranks_agree(tmp_path: Path, tiny_bert: Path, distill: bool) -> None:
    job = Path(__file__).resolve().parent / "ddp_job.py"
    command = [sys.executable, str(job), str(tmp_path), *(["--distill", str(tiny_bert)] if distill else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # The toy model has two targets; the tiny BERT's student 2 layers x 6 Linear, its teacher none.
    bert_targets = {f"model.bert.encoder.layer.{i}.{name}" for i in range(2) for name in BERT_LINEARS}
    targets = bert_targets if distill else {"net.0", "net.2"}
    assert rank0["admm"]["zstep_count"] == 3 and set(rank0["admm"]["z"]) == targets
    for key in ("z", "u", "mask"):
        for name, tensor in rank0["admm"][key].items():
            assert torch.equal(tensor, rank1["admm"][key][name]), (key, name)
    assert set(rank0["masks"]) == targets
    assert all(torch.equal(mask, rank1["masks"][name]) for name, mask in rank0["masks"].items())
    assert all(torch.equal(w, rank1["weights"][name]) for name, w in rank0["weights"].items())
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("last*.ckpt")) == ["last.ckpt"]  # one checkpoint, from rank 0
    message = f"HardPruneCallback: pruned {len(targets)} layers"
    assert result.stdout.count(message) + result.stderr.count(message) == 1


def test_a_fisher_cut_agrees_across_ranks(tmp_path: Path) -> None:
    """Each rank sees other batches; the Fisher is gathered from the all-reduced gradients, so every rank cuts alike."""
    job = Path(__file__).resolve().parent / "ddp_job.py"
    result = subprocess.run([sys.executable, str(job), str(tmp_path), "--fisher"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert set(rank0["masks"]) == {"net.0", "net.2"}
    assert all(torch.equal(mask, rank1["masks"][name]) for name, mask in rank0["masks"].items())
    assert all(torch.equal(w, rank1["weights"][name]) for name, w in rank0["weights"].items())
    assert "(Fisher over 4 steps)" in result.stdout + result.stderr


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
        NxMSparsifyCallback(pattern="2:4").setup(trainer, torch.nn.Module(), "fit")  # type: ignore[arg-type]


@pytest.mark.parametrize("config_name", ["glue.yaml", "glue_kd.yaml"])
def test_cli_pipeline_under_ddp_writes_one_export(tmp_path: Path, glue_dir: Path, tiny_bert: Path, config_name: str) -> None:
    """``python cli.py fit --config glue.yaml --trainer.devices 2 --trainer.strategy ddp`` on CPU (gloo), with and
    without a distillation teacher."""
    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "configs" / config_name).read_text())
    config["trainer"]["callbacks"][0]["init_args"]["update_every"] = 1
    config["trainer"]["callbacks"][1]["init_args"]["export_dir"] = str(tmp_path / "export")
    if config_name == "glue.yaml":  # 2 steps an epoch per rank: dense epoch 0, ADMM in epoch 1, masked epoch 2
        config["trainer"]["callbacks"][0]["init_args"].update(start_epoch=1, end_epoch=2)
        config["model"]["init_args"]["teacher_snapshot_epoch"] = 1
    (tmp_path / "glue.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "cli.py", "fit", "--config", str(tmp_path / "glue.yaml"),
        f"--model.init_args.model_name_or_path={tiny_bert}", f"--data.data_dir={glue_dir}",
        "--data.max_train_samples=32", "--data.max_eval_samples=32", "--data.max_seq_length=32", "--data.batch_size=8",
        "--trainer.max_epochs=3", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    if config_name == "glue_kd.yaml":
        command.append(f"--model.init_args.teacher={tiny_bert}")
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify(tmp_path / "export") == []
    assert (result.stdout + result.stderr).count("HardPruneCallback: exported the final weights (N:M) to") == 1
    assert not list(tmp_path.glob(".export.partial-*"))
    assert sorted(p.name for p in (tmp_path / "runs").rglob("last*.ckpt")) == ["last.ckpt"]
