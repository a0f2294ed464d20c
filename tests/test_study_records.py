"""A finished run's record (benchmarks/study/records.py): its score from the events, the mask agreement, loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from study_helpers import write_events

from benchmarks.study import records, runner
from benchmarks.study.plan import RunSpec


def write_export(directory: Path, weights: dict, layouts: dict[str, str]) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file(weights, str(directory / "model.safetensors"))
    layers = {name: {"pattern": "2:4", "layout": layout} for name, layout in layouts.items()}
    (directory / "sparsity.json").write_text(json.dumps({"layers": layers}))


def test_each_sparse_run_records_how_much_of_its_mask_magnitude_keeps_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    dense = torch.tensor([[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0]])  # magnitude keeps 0, 1 and 6, 7
    sparse = torch.tensor([[4.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]])  # keeps 0, 2 and 6, 7: 3 of its 4 agree
    write_export(tmp_path / "dense", {"a": dense, "b": dense.t().clone()}, {})
    write_export(tmp_path / "sparse", {"a": sparse, "b": sparse.t().clone()}, {"a": "out_in", "b": "in_out"})
    assert records.kept_share(tmp_path / "sparse", tmp_path / "dense") == 6 / 8
    records.note_dense_build(tmp_path / "dense", 85.0)  # the dense model's dev score, as the driver notes it

    # The driver measures it when a sparse run finishes, against the run's dense start (the teacher of a _kd run).
    for method in ("nxm", "nxm_kd"):
        spec = RunSpec(method, "rte", 42, 10, 1e-4, tmp_path / "work", "glue", "paper", records_dir=tmp_path / "records")
        spec.model, spec.teacher = (None, str(tmp_path / "dense")) if method == "nxm_kd" else (str(tmp_path / "dense"), None)

        def finish_run(command: list[str], log: object, threads: int | None, spec: RunSpec = spec) -> tuple[int, float]:
            shutil.copytree(tmp_path / "sparse", spec.export_dir)
            write_events(spec.run_dir, {"val/score": [(78, 60.0)]})
            return 0, 1.0

        monkeypatch.setattr(runner, "run_command", finish_run)
        record = runner.execute(spec)
        assert record["kept_share_of_magnitude_mask"] == 6 / 8 and record["dense_start_score"] == 85.0


def test_records_load_in_finishing_order(tmp_path: Path) -> None:
    for name, finished in (("b", "2026-01-02"), ("a", "2026-01-03"), ("c", "2026-01-01")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": name, "finished_at": finished}))
    assert [r["name"] for r in records.load_records(tmp_path)] == ["c", "b", "a"]


@pytest.mark.parametrize(
    ("scalars", "best", "final"),
    [
        # the research code's recipe: the cut at the end of fit, after the last validation of the dense weights
        ({"val/score": [(155, 57.4), (935, 58.1), (1559, 56.7)], "prune/score_after": [(1560, 49.8)]}, 49.8, 49.8),
        # asp: the cut at fit start, then masked fine-tuning
        ({"val/score": [(77, 55.0), (155, 58.0), (233, 57.0)], "prune/score_after": [(0, 47.0)]}, 58.0, 57.0),
        # nxm: the dense-weight evaluations of the ADMM phase do not count, the ones after the cut do
        ({"val/score": [(77, 61.0), (155, 56.0), (233, 57.5)], "prune/score_after": [(150, 55.5)]}, 57.5, 57.5),
        ({"val/score": [(77, 61.0), (155, 62.0)]}, 62.0, 62.0),  # dense
    ],
)
def test_a_runs_score_is_that_of_the_model_it_exports(tmp_path: Path, scalars: dict, best: float, final: float) -> None:
    write_events(tmp_path, scalars)
    metrics = records.run_metrics(tmp_path)
    assert (metrics["best_score"], metrics["final_score"]) == (pytest.approx(best), pytest.approx(final))


def test_a_record_keeps_the_distillation_loss_terms_whole(tmp_path: Path) -> None:
    # Issue 27's question "can the student match its teacher's features?" is read from train/hidden_loss at the end.
    hidden = [(9, 0.8), (19, 0.3), (29, 0.21)]
    write_events(tmp_path, {"val/score": [(29, 80.0)], "train/hidden_loss": hidden, "train/task_loss": [(9, 1.0)],
                            "train/unlisted": [(9, 1.0)]})  # fmt: skip
    curves = records.run_metrics(tmp_path)["curves"]
    assert set(curves) == {"train/hidden_loss", "train/task_loss"}
    assert [(step, pytest.approx(value)) for step, value in curves["train/hidden_loss"]] == hidden
