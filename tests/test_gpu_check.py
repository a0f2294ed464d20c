"""benchmarks/gpu_check.py on the CPU: everything but the GPU measurements themselves, so that the few minutes of a lent
GPU are not lost to a typo: the refusal without CUDA, argument errors, the budget, the report from a recorded run, and
the kernel and fit parts in their dry-run (CPU, masked) form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.gpu_check import FORMAT, main, report, run_kernels

REPO = Path(__file__).resolve().parents[1]

RECORD = {
    "format": FORMAT, "machine": {"torch": "2.9.0+cu128"}, "date": "2026-12-01T10:00:00+00:00",
    "command": "python -m benchmarks.gpu_check run", "budget_s": 420.0, "seconds": 201.4, "dry_run": False,
    "gpu": {"name": "NVIDIA H200", "capability": [9, 0], "cuda": "12.8", "cusparselt": 602,
            "semi_structured_class": "SparseSemiStructuredTensorCUSPARSELT"},
    "parts": {
        "tests": {"status": "passed", "summary": "7 passed, 430 deselected in 31.20s", "seconds": 35.2, "failed": []},
        "kernels": {
            "status": "partial", "backend": "semi_structured", "seq": 128, "rounds": 7, "calls_per_round": 20,
            "timer": "CUDA events", "shapes": {"MiniLM-L6": {"hidden": 384, "intermediate": 1536, "layers": 6, "heads": 12}},
            "rows": [{"shapes": "MiniLM-L6", "dtype": "fp16", "batch": 64,
                      "dense_ms": {"attention": 0.05, "ffn_in": 0.16, "ffn_out": 0.15, "model": 3.0},
                      "sparse_ms": {"attention": 0.05, "ffn_in": 0.1, "ffn_out": 0.12, "model": 2.4},
                      "max_abs_diff": {"attention": 0.0, "ffn_in": 0.001, "ffn_out": 0.001, "model": 0.0039}}],
            "skipped": ["BERT-base bf16 batch 64"], "note": "budget: 1 configurations not measured", "seconds": 80.5,
        },
        "fit": {"status": "passed", "model": "sentence-transformers/all-MiniLM-L6-v2", "examples": 64,
                "data": "../shared/data/glue", "accelerator": "gpu", "precision": "bf16-mixed", "fit_s": 41.0,
                "validate_s": 6.2, "fit_score": 21.5, "validate_score": 21.46, "seconds": 60.1,
                "backends_after_fit": {"semi_structured": 36}, "backends_after_validate": {"semi_structured": 36}},
    },
}  # fmt: skip


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``main(argv)`` exits with, status 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


def test_without_cuda_run_and_fit_refuse_in_one_line() -> None:
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    for args in (["run"], ["fit", "--out", "x.json", "--workdir", "x"]):
        done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], capture_output=True, text=True,
                              cwd=REPO, env=env)  # fmt: skip
        assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("error: no CUDA device (") and done.stderr.strip().endswith("on the CPU.")
        assert len(done.stderr.strip().splitlines()) == 1


def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "'0' is not a positive float" in refusal(["run", "--budget", "0"], capsys)
    assert "'-8' is not a positive int" in refusal(["run", "--dry-run", "--batches", "1", "-8"], capsys)
    assert "invalid choice: 'gpu'" in refusal(["run", "--parts", "gpu"], capsys)
    assert "required: command" in refusal([], capsys)
    assert f"cannot read {tmp_path / 'none.json'}" in refusal(["report", str(tmp_path / "none.json")], capsys)
    (tmp_path / "bad.json").write_text("{not json")
    assert "is not JSON" in refusal(["report", str(tmp_path / "bad.json")], capsys)
    (tmp_path / "other.json").write_text(json.dumps({"machine": {}}))
    assert f'is not a record of benchmarks.gpu_check (no "format": "{FORMAT}")' in refusal(
        ["report", str(tmp_path / "other.json")], capsys
    )


def test_report_regenerates_the_tables_of_a_recorded_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(RECORD))
    assert main(["report", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "Machine: NVIDIA H200 (compute capability 9.0), CUDA 12.8, cuSPARSELt 602 (SparseSemiStructuredTensorCUSPARSELT)"
    )
    assert "(201 s of a 420 s budget)" in lines[0]
    assert "| tests | passed: 7 passed, 430 deselected in 31.20s | 35 s |  |" in lines
    assert "| kernels | partial | 80 s | budget: 1 configurations not measured |" in lines
    # speedup = dense / 2:4: the encoder 3.0 / 2.4 ms, the layers 0.05 / 0.05, 0.16 / 0.1, 0.15 / 0.12
    assert "| MiniLM-L6 (384/1536) | fp16 | 64 | 3.00 ms | 2.40 ms | **1.25x** | 1.00x | 1.60x | 1.25x | 3.9e-03 |" in lines
    assert "Not measured (budget): BERT-base bf16 batch 64." in lines
    assert "| validate | 6 s | 21.46 | semi_structured (36) |" in lines
    assert report(RECORD) == "\n".join(lines)


def test_kernels_past_their_budget_are_listed_as_skipped() -> None:
    result = run_kernels(0.0, dry_run=True, batches=[1, 8], rounds=1, calls=1)
    assert result["status"] == "partial" and result["rows"] == []
    assert result["skipped"] == ["tiny fp16 batch 1", "tiny fp16 batch 8", "tiny bf16 batch 1", "tiny bf16 batch 8"]


def test_a_budget_too_short_for_a_part_skips_it_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "short.json"
    assert main(["run", "--dry-run", "--budget", "50", "--parts", "kernels", "fit", "--out", str(out)]) == 0
    parts = json.loads(out.read_text())["parts"]
    # the kernels may take none of it (the fit needs 60 s after them), and the fit has less than its 60 s
    assert parts["kernels"]["status"] == parts["fit"]["status"] == "skipped"
    assert parts["kernels"]["note"].endswith("it needs 20 s") and parts["fit"]["note"].endswith("it needs 60 s")
    assert "| fit | skipped |  | budget: " in capsys.readouterr().out


def test_dry_run_measures_masked_against_dense_and_reports_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dry.json"
    argv = ["run", "--dry-run", "--parts", "tests", "kernels", "--batches", "1", "--rounds", "1", "--calls", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    recorded = json.loads(out.read_text())
    assert recorded["format"] == FORMAT and recorded["dry_run"] and recorded["gpu"] == {"name": None}
    assert recorded["parts"]["tests"]["status"] == "skipped"
    kernels = recorded["parts"]["kernels"]
    assert (kernels["status"], kernels["backend"], kernels["timer"]) == ("done", "masked", "wall clock")
    assert [(r["shapes"], r["dtype"], r["batch"]) for r in kernels["rows"]] == [("tiny", "fp16", 1), ("tiny", "bf16", 1)]
    row = kernels["rows"][0]
    assert set(row["dense_ms"]) == set(row["sparse_ms"]) == {"attention", "ffn_in", "ffn_out", "model"}
    assert all(diff == 0.0 for r in kernels["rows"] for diff in r["max_abs_diff"].values())  # masked is dense, exactly
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "| tiny (64/256) | bf16 | 1 | " in capsys.readouterr().out


def test_dry_run_fit_validates_through_the_cli_with_backend_auto(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fit part's config (glue.yaml, 3 short epochs, bf16-mixed) on the CPU, on made-up STS-B rows: it runs, and
    validate serves the pruned layers by the backend auto picks here."""
    monkeypatch.setattr(gpu_check, "find_glue", lambda: None)
    result = gpu_check.fit_check(tmp_path, str(tiny_bert), None, dry_run=True)
    assert (result["status"], result["data"], result["accelerator"]) == ("passed", "synthetic STS-B rows", "cpu")
    assert result["backends_after_fit"] == result["backends_after_validate"] == {"masked": 12}
    assert (tmp_path / "export" / "sparsity.json").is_file()


def test_a_part_that_raises_is_recorded_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One chance on a GPU: a kernel that refuses it must not cost the other parts (exit status 1 at the end)."""

    def refuse(*args: object) -> dict:
        raise RuntimeError("CUDA error: no kernel image is available\nfor execution on the device")

    monkeypatch.setattr(gpu_check, "run_kernels", refuse)
    out = tmp_path / "failed.json"
    assert main(["run", "--dry-run", "--parts", "tests", "kernels", "--out", str(out)]) == 1
    parts = json.loads(out.read_text())["parts"]
    assert parts["tests"]["status"] == "skipped"
    assert parts["kernels"]["status"] == "failed"
    assert parts["kernels"]["note"] == "RuntimeError: CUDA error: no kernel image is available"
    assert "| kernels | failed |  | RuntimeError: CUDA error: no kernel image is available |" in capsys.readouterr().out


def test_the_tests_part_records_failures_and_stops_a_hung_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest stands in for by small scripts: one that fails a test, one that hangs past its share of the budget."""
    failing = "print('FAILED tests/test_x.py::test_y - boom'); print('== 1 failed, 6 passed in 3.0s =='); raise SystemExit(1)"
    monkeypatch.setattr(gpu_check, "TESTS_COMMAND", (sys.executable, "-c", failing))
    result = gpu_check.run_tests(30.0, dry_run=False)
    assert (result["status"], result["summary"]) == ("failed", "1 failed, 6 passed in 3.0s")
    assert result["failed"] == ["FAILED tests/test_x.py::test_y - boom"] and "boom" in result["output_tail"]

    hanging = "import time; print('collecting', flush=True); time.sleep(60)"
    monkeypatch.setattr(gpu_check, "TESTS_COMMAND", (sys.executable, "-c", hanging))
    result = gpu_check.run_tests(2.0, dry_run=False)
    assert (result["status"], result["note"]) == ("timeout", "stopped after 2 s")
    assert result["output_tail"] == "collecting\n"
