"""The accuracy study's driver and report (benchmarks/): run routing, sweep parsing, the table and the goals."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import glue_study  # noqa: E402
import main_job  # noqa: E402
import study_report  # noqa: E402


def study_args(work_dir: Path) -> argparse.Namespace:
    return argparse.Namespace(work_dir=work_dir, data_dir="glue")


def finish_dense(work_dir: Path, task: str, seed: int) -> Path:
    export = work_dir / "exports" / f"dense_{task}_s{seed}"
    export.mkdir(parents=True)
    glue_study.write_record(work_dir / "records" / f"dense_{task}_s{seed}.json", {"export_dir": str(export)})
    return export


def test_parse_changes_reads_yaml_values_and_rejects_bad_items() -> None:
    assert glue_study.parse_changes(["rho=0.1", "penalty=gradient", "update_every=null"]) == {
        "rho": 0.1, "penalty": "gradient", "update_every": None,
    }  # fmt: skip
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        glue_study.parse_changes(["rho"])


def test_sparse_methods_start_from_the_dense_export_of_the_dense_seed(tmp_path: Path) -> None:
    profile = glue_study.Profile(seeds=(42, 43), dense_epochs=3, sparse_epochs=1, dense_seeds=(42,))
    args = study_args(tmp_path)
    assert glue_study.make_spec("asp", "rte", 43, profile, args) is None  # no dense run yet: wait
    export = finish_dense(tmp_path, "rte", 42)
    asp = glue_study.make_spec("asp", "rte", 43, profile, args)
    kd = glue_study.make_spec("nxm_kd", "rte", 43, profile, args)
    assert asp is not None and asp.model == str(export) and asp.epochs == 1
    assert kd is not None and kd.teacher == str(export) and kd.model is None
    onestage = glue_study.make_spec("nxm_onestage", "rte", 42, profile, args)
    assert onestage is not None and onestage.model is None and onestage.epochs == 4


def test_write_config_applies_the_sweep_change_and_the_export_dir(tmp_path: Path) -> None:
    spec = glue_study.RunSpec("nxm", "stsb", 42, 1, tmp_path, "glue", 128, tag="_tune_rho_0.5")
    spec.callback_args = {glue_study.ADMM_CALLBACK: {"rho": 0.5}}
    spec.write_config()
    callbacks = {c["class_path"]: c["init_args"] for c in yaml.safe_load(spec.config_path.read_text())["trainer"]["callbacks"]}
    assert callbacks[glue_study.ADMM_CALLBACK]["rho"] == 0.5
    assert callbacks["callbacks.HardPruneCallback"]["export_dir"] == str(tmp_path / "exports" / "nxm_tune_rho_0.5_stsb_s42")
    assert spec.record_path.name == "nxm_tune_rho_0.5_stsb_s42.json"


def record(method: str, task: str, seed: int, score: float, **extra: object) -> dict:
    return {"method": method, "task": task, "seed": seed, "metrics": {"best_score": score}, **extra}


def test_table_averages_seeds_and_the_goals_compare_common_tasks() -> None:
    records = [
        *(record("asp", "rte", s, v) for s, v in ((42, 60.0), (43, 62.0), (44, 64.0))),
        record("asp", "stsb", 42, 80.0),
        record("nxm", "rte", 42, 63.5),  # nxm on rte only: its goal is taken on rte alone
        record("dense", "rte", 42, 66.0),
        record("nxm_kd", "rte", 42, 65.5),
    ]
    table = "\n".join(study_report.main_table(records))
    assert "62.0 ± 2.0 (n=3)" in table and "| 80.0 |" in table
    goals = study_report.goal_lines(records)
    assert goals[0] == "- nxm at least 1.0 point above asp: nxm 63.5 - asp 62.0 = +1.5 on RTE: **met**."
    assert goals[1] == "- nxm_kd within 1.0 point of dense: nxm_kd 65.5 - dense 66.0 = -0.5 on RTE: **met**."
    records.append(record("nxm_kd", "rte", 43, 63.0))  # mean 64.25: 1.75 below dense
    assert study_report.goal_lines(records)[1].endswith("**not met**.")


def test_report_rewrites_only_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    page = "# Results\n\nhand-written intro\n\n{begin}\n{table}\n{end}\n\nanalysis\n"
    results.write_text(page.format(begin=study_report.BEGIN, table="old table", end=study_report.END))
    study_report.write_results(results, [study_report.BEGIN, "new table", study_report.END])
    assert results.read_text() == page.format(begin=study_report.BEGIN, table="new table", end=study_report.END)


def test_records_load_in_finishing_order(tmp_path: Path) -> None:
    for name, finished in (("b", "2026-01-02"), ("a", "2026-01-03"), ("c", "2026-01-01")):
        (tmp_path / f"{name}.json").write_text(json.dumps(record("asp", "rte", 42, 1.0, finished_at=finished, name=name)))
    assert [r["name"] for r in study_report.load_records(tmp_path)] == ["c", "b", "a"]


def test_sweep_settings_come_from_the_resolved_config() -> None:
    admm = {"rho": 0.02, "rho_factor": 1.5, "rho_max": 0.2, "penalty": "decoupled", "update_every": None, "end_fraction": 0.3}
    config = {
        "model": {"init_args": {"learning_rate": 2e-4, "warmup_ratio": 0.06}},
        "trainer": {"callbacks": [{"class_path": "callbacks.NxMSparsifyCallback", "init_args": admm}]},
    }
    assert study_report.settings({"resolved_config": config}) == {
        "lr": "0.0002", "warmup": "0.06", "penalty": "decoupled", "rho": "0.02 x1.5 per Z-step up to 0.2",
        "Z-step every": "epoch", "ADMM until": "fraction 0.3",
    }  # fmt: skip
    config["trainer"]["callbacks"] = []
    assert study_report.settings({"resolved_config": config})["penalty"].startswith("no ADMM")


def test_admm_plot_prefers_the_main_study_run() -> None:
    curves = {"curves": {"admm/primal_residual": [(20, 0.1)]}, "best_score": 1.0}
    sweep = record("nxm", "stsb", 42, 1.0, tag="_tune_rho_0.1", metrics=curves)
    main = record("nxm", "stsb", 42, 1.0, metrics=curves)
    other_task = record("nxm", "rte", 42, 1.0, metrics=curves)
    assert study_report.admm_record([sweep, other_task, main], "stsb") is main
    assert study_report.admm_record([sweep, other_task], "cola") is other_task


def test_a_record_is_reused_only_while_its_config_and_command_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = glue_study.RunSpec("nxm", "stsb", 42, 1, tmp_path, "glue", 128)
    current = glue_study.run_fingerprint(spec.edited_config()[0], spec.command())
    glue_study.write_record(spec.record_path, {"run_fingerprint": current, "metrics": {"best_score": 1.0}})
    started: list[list[str]] = []
    monkeypatch.setattr(
        glue_study.subprocess, "run", lambda command, **kw: started.append(command) or argparse.Namespace(returncode=1)
    )
    assert glue_study.execute(spec, keep_checkpoints=False) == {"run_fingerprint": current, "metrics": {"best_score": 1.0}}
    assert started == []
    spec.epochs = 2  # the same run name with another budget: the record is stale
    assert glue_study.execute(spec, keep_checkpoints=False) is None  # it ran again (and failed here)
    assert len(started) == 1 and "2" in started[0]
    assert not spec.record_path.exists()
    assert json.loads((spec.record_path.parent / "stale" / spec.record_path.name).read_text())["run_fingerprint"] == current


def write_events(run_dir: Path, scalars: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


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
    record = {"label": "x", "task": "stsb", "metrics": glue_study.run_metrics(tmp_path), "convergence": summary, "wall_s": 600}
    row = main_job.summary_row(record)
    assert "**85.00**" in row and "84.30 -> 84.10 (+0.20)" in row and ("| yes |" in row) == converged
