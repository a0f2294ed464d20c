"""Exact resume: a real subprocess SIGKILLed during ADMM, right after the hard prune, or during masked fine-tuning,
resumed from ``last.ckpt``, ends with the same weights as a run never stopped: for a plain LightningModule and for a
DistillationModule (BERT student and teacher, teacher-logit cache)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).resolve().parent / "resume_job.py"
KILL_STEPS = pytest.mark.parametrize("kill_at", [13, 21, 30], ids=["during-admm", "after-prune", "masked-fine-tuning"])


def run_job(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JOB), str(out), *args], capture_output=True, text=True, timeout=300)


def straight_run(out: Path, *args: str) -> dict[str, torch.Tensor]:
    result = run_job(out, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return torch.load(out / "final.pt", weights_only=True)


def assert_kill_then_resume_matches(out: Path, uninterrupted: dict[str, torch.Tensor], kill_at: int, *args: str) -> None:
    killed = run_job(out, "--kill-at", str(kill_at), *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "final.pt").exists()
    resumed = run_job(out, "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(out / "final.pt", weights_only=True)
    assert final.keys() == uninterrupted.keys()
    for name, weight in uninterrupted.items():
        assert (final[name] - weight).abs().max() <= 1e-6, name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return straight_run(tmp_path_factory.mktemp("straight"))


@pytest.fixture(scope="module")
def uninterrupted_distill(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, torch.Tensor]:
    return straight_run(tmp_path_factory.mktemp("straight_kd"), "--distill", str(tiny_bert))


@KILL_STEPS
def test_sigkill_then_resume_matches(tmp_path: Path, uninterrupted: dict[str, torch.Tensor], kill_at: int) -> None:
    assert_kill_then_resume_matches(tmp_path, uninterrupted, kill_at)


@KILL_STEPS
def test_sigkill_then_resume_matches_with_distillation(
    tmp_path: Path, uninterrupted_distill: dict[str, torch.Tensor], tiny_bert: Path, kill_at: int
) -> None:
    assert_kill_then_resume_matches(tmp_path, uninterrupted_distill, kill_at, "--distill", str(tiny_bert))
