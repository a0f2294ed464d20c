"""The benchmarks' --help: their module docstrings without Sphinx markup, and the values the study's plan names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from benchmarks._help import help_text
from benchmarks.study.plan import DENSE_LRS, SPARSE_LRS, SWEEP_TASK

REPO = Path(__file__).resolve().parents[1]


def test_help_text_keeps_the_names_and_drops_the_markup() -> None:
    doc = "Each of :data:`DENSE_LRS` and :func:`~pkg.mod.expected_wall_s`, in ``glue.yaml``:\n    indented ``x``"
    assert help_text(doc) == "Each of DENSE_LRS and pkg.mod.expected_wall_s, in glue.yaml:\n    indented x"


def test_the_studys_help_as_a_user_types_it_gives_the_values_of_the_constants_it_names() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.glue_study", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "`" not in out and ":data:" not in out

    def named(constant: str) -> list[str]:
        found = re.search(rf"{constant}\s+\(([^)]*)\)", out)
        assert found, f"{constant} without its values in --help"
        return [value.strip() for value in found.group(1).split(",")]

    assert [float(lr) for lr in named("DENSE_LRS")] == list(DENSE_LRS)
    assert [float(lr) for lr in named("SPARSE_LRS")] == list(SPARSE_LRS)
    assert named("SWEEP_TASK") == [SWEEP_TASK]
