"""The main job's record (benchmarks/main_job.py): the last Z-step against the thresholds, the table row."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from study_helpers import write_events

from benchmarks import main_job


@pytest.mark.parametrize(
    ("last_flip", "last_residual", "converged"), [(0.0, 6e-6, True), (0.02, 6e-6, False), (0.0, 2e-3, False)]
)
def test_main_job_record_reads_the_last_zstep_against_the_thresholds(
    tmp_path: Path, last_flip: float, last_residual: float, converged: bool
) -> None:
    write_events(tmp_path, {
        "admm/mask_flip_rate": [(20, 0.09), (40, last_flip)],
        "admm/primal_residual": [(20, 0.08), (40, last_residual)],
        "val/score": [(40, 80.0), (60, 85.0)], "prune/score_before": [(40, 84.3)], "prune/score_after": [(40, 84.1)],
    })  # fmt: skip
    summary = main_job.convergence(tmp_path)
    assert (summary["zsteps"], summary["converged"]) == (2, converged)
    assert summary["last_flip_rate"] == pytest.approx(last_flip)
    assert summary["last_primal_residual"] == pytest.approx(last_residual)
    command = [sys.executable, "cli.py", "fit", "--config", "configs/glue.yaml"]
    record = main_job.main_job_record("stsb", 43, "x", tmp_path, command, wall_s=600.0)
    assert record["command"] == "python cli.py fit --config configs/glue.yaml" and record["convergence"] == summary
    assert record["seed"] == 43
    row = main_job.summary_row(record)
    assert "**85.00**" in row and "84.30 -> 84.10 (+0.20)" in row and ("| yes |" in row) == converged
