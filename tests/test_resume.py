"""Exact resume: a real subprocess SIGKILLed during ADMM, right after the hard prune, or during masked fine-tuning,
resumed from ``last.ckpt``, ends with the same weights as a run never stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).resolve().parent / "resume_job.py"


def run_job(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JOB), str(out), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("straight")
    assert run_job(out).returncode == 0
    return torch.load(out / "final.pt", weights_only=True)


@pytest.mark.parametrize("kill_at", [13, 21, 30], ids=["during-admm", "after-prune", "masked-fine-tuning"])
def test_sigkill_then_resume_matches(tmp_path: Path, uninterrupted: dict[str, torch.Tensor], kill_at: int) -> None:
    killed = run_job(tmp_path, "--kill-at", str(kill_at))
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "final.pt").exists()
    resumed = run_job(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    for name, weight in uninterrupted.items():
        assert (final[name] - weight).abs().max() <= 1e-6, name
