"""The accuracy study's driver and report (benchmarks/): the plan and its choices, resuming, the tables and goals."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import glue_study  # noqa: E402
import main_job  # noqa: E402
import study_report  # noqa: E402
from glue_study import RunSpec, Study  # noqa: E402


def finish(study: Study, spec: RunSpec, score: float) -> dict:
    """Write the record of a finished ``spec`` (and its export folder) as the study would."""
    record = {"name": spec.name, "method": spec.method, "budget": spec.budget, "task": spec.task, "seed": spec.seed,
              "learning_rate": spec.learning_rate, "metrics": {"best_score": score, "final_score": score - 1.0}}  # fmt: skip
    glue_study.write_record(spec.record_path, record)
    spec.export_dir.mkdir(parents=True, exist_ok=True)
    return record


def small_study(tmp_path: Path) -> Study:
    return Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb",), seeds=(42, 43), records_dir=tmp_path / "records")


def pending(study: Study) -> list[str]:
    return [item.name if isinstance(item, RunSpec) else "wait" for item in study.runs() if not isinstance(item, RunSpec)
            or study.record(item) is None]  # fmt: skip


def finish_grid_and_sweep(study: Study) -> None:
    """Finish the dense grid of each of the study's tasks (lr 1e-4 best) and the sweep (lr 1e-4 best for asp and nxm)."""
    for task in study.tasks:
        for spec, score in zip(study.dense_grid(task), (84.0, 86.0, 85.0)):
            finish(study, spec, score)
    for method in ("asp", "nxm"):
        for spec, score in zip(study.sweep(method), (83.0, 81.0, 82.0)):
            finish(study, spec, score)


def test_the_plan_runs_the_dense_grid_first_and_starts_every_sparse_run_from_its_best(tmp_path: Path) -> None:
    study = small_study(tmp_path)
    grid = study.dense_grid("stsb")
    assert [spec.learning_rate for spec in grid] == list(glue_study.DENSE_LRS)
    assert all(spec.epochs == glue_study.DENSE_EPOCHS and spec.budget is None for spec in grid)
    assert pending(study)[:3] == [spec.name for spec in grid] and set(pending(study)[3:]) == {"wait"}
    for spec, score in zip(grid, (84.0, 86.0, 85.0)):
        finish(study, spec, score)
    sweep = [item for item in study.runs() if isinstance(item, RunSpec) and item.budget == "paper"]
    assert [(s.method, s.learning_rate) for s in sweep[:6]] == [(m, lr) for lr in glue_study.SPARSE_LRS for m in ("asp", "nxm")]
    best_export = str(grid[1].export_dir)  # lr 1e-4 scored best
    assert all(s.model == best_export and s.teacher is None and s.epochs == 10 for s in sweep)
    # Everything after the sweep waits on it, except the short budget, whose learning rates are fixed.
    short = [item for item in study.runs() if isinstance(item, RunSpec) and item.budget == "short"]
    assert {(s.method, s.learning_rate, s.epochs) for s in short} == {("asp", 2e-4, 1), ("nxm", 3e-4, 1)}
    assert len(short) == 4  # 2 methods x 2 seeds


def test_each_method_runs_at_its_sweeps_best_learning_rate_and_kd_uses_the_dense_teacher(tmp_path: Path) -> None:
    study = small_study(tmp_path)
    for spec, score in zip(study.dense_grid("stsb"), (84.0, 86.0, 85.0)):
        finish(study, spec, score)
    for method, scores in (("asp", (80.0, 82.0, 81.0)), ("nxm", (83.0, 81.0, 82.0))):
        for spec, score in zip(study.sweep(method), scores):
            finish(study, spec, score)
    paper = [item for item in study.runs() if isinstance(item, RunSpec) and item.budget == "paper"]
    lrs = {(s.method, s.seed): s.learning_rate for s in paper[6:]}
    lrs[("asp", 42)] = lrs[("nxm", 42)] = None  # the sweep's own runs: the seed-42 study runs at the chosen rate
    lrs |= {(s.method, s.seed): s.learning_rate for s in paper[:6] if study.learning_rate(s.method, "paper") == s.learning_rate}
    assert lrs[("asp", 42)] == lrs[("asp_kd", 43)] == glue_study.SPARSE_LRS[1]
    assert lrs[("nxm", 43)] == lrs[("nxm_kd", 42)] == glue_study.SPARSE_LRS[0]
    assert lrs[("nxm_paper", 42)] == 1e-4 and ("nxm_paper", 43) not in lrs  # the config's; the first seed only
    assert lrs[("asp_fisher", 42)] == lrs[("asp_fisher", 43)] == lrs[("asp", 42)]  # asp's, every seed
    kd = next(s for s in paper if s.method == "nxm_kd")
    assert kd.teacher == str(study.dense_grid("stsb")[1].export_dir) and kd.model is None
    names = [s.name for s in study.runs() if isinstance(s, RunSpec)]
    assert len(names) == len(set(names)) == 3 + 6 + 2 * 5 - 2 + 1 + 2 * 2  # no run planned twice


def test_a_study_of_later_seeds_only_starts_from_the_first_seeds_dense_grid_and_sweep(tmp_path: Path) -> None:
    # `--seeds 44` resumes one seed on a new machine: it must reuse seed 42's dense grid and sweep, not plan its own.
    full = small_study(tmp_path)
    finish_grid_and_sweep(full)
    later = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb",), seeds=(43,), records_dir=tmp_path / "records")
    assert later.dense_grid("stsb") == full.dense_grid("stsb") and later.sweep("nxm") == full.sweep("nxm")
    pending_runs = [item for item in later.runs() if isinstance(item, RunSpec) and later.record(item) is None]
    assert pending_runs and {spec.seed for spec in pending_runs} == {43}
    assert "nxm_paper" not in {spec.method for spec in pending_runs}  # a first-seed-only method
    assert {spec.model or spec.teacher for spec in pending_runs} == {str(full.dense_grid("stsb")[1].export_dir)}


def test_the_two_runs_of_each_goals_pair_run_back_to_back(tmp_path: Path) -> None:
    # A session that ends within a task's seed then leaves whole pairs, each started from one build of the dense model.
    study = small_study(tmp_path)
    finish_grid_and_sweep(study)
    order = [s.method for s in study.runs() if isinstance(s, RunSpec) and (s.budget, s.seed) == ("paper", 43)]
    pairs = [(first, second) for first, second, _ in study_report.GOALS if "dense" not in (first, second)]
    assert pairs and all(abs(order.index(first) - order.index(second)) == 1 for first, second in pairs), order


def test_the_plan_goes_seed_by_seed_at_both_budgets_and_each_dense_grid_comes_before_its_tasks_runs(tmp_path: Path) -> None:
    records = tmp_path / "records"
    study = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb", "rte"), seeds=(42, 43), records_dir=records)
    finish_grid_and_sweep(study)
    order = [(s.budget or "dense", s.seed, s.task) for s in study.runs() if isinstance(s, RunSpec)]
    blocks = [key for i, key in enumerate(order) if i == 0 or order[i - 1] != key]
    assert blocks == [("dense", 42, "stsb"), ("paper", 42, "stsb"), ("dense", 42, "rte"), ("paper", 42, "rte"),
                      ("short", 42, "stsb"), ("short", 42, "rte"),
                      ("paper", 43, "stsb"), ("paper", 43, "rte"), ("short", 43, "stsb"), ("short", 43, "rte")]  # fmt: skip


def test_run_trains_ready_runs_two_at_a_time_and_stops_launching_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb", "rte"), seeds=(42,), budgets=("paper",),
                  records_dir=tmp_path / "records")  # fmt: skip
    monkeypatch.setattr(glue_study, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(glue_study, "Study", lambda *args, **kwargs: study)
    lock = threading.Lock()
    launched: list[tuple[str, int | None, bool]] = []
    active: list[str] = []
    most_at_once = 0

    def fake_execute(spec: RunSpec, keep_checkpoints: bool, threads: int | None) -> dict | None:
        nonlocal most_at_once
        with lock:
            stsb_grid_done = all(study.record(s) for s in study.dense_grid("stsb"))
            launched.append((spec.name, threads, stsb_grid_done))
            active.append(spec.name)
            most_at_once = max(most_at_once, len(active))
        time.sleep(1.5)  # longer than planning the next runs (which reads the data files), even on a busy machine
        with lock:
            active.remove(spec.name)
            if len(launched) >= 8:
                return None  # a failed run
            record = finish(study, spec, 80.0 + len(launched))
            record["run_fingerprint"] = glue_study.run_fingerprint(spec)
            glue_study.write_record(spec.record_path, record)
            return record

    monkeypatch.setattr(glue_study, "execute", fake_execute)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--tasks", "stsb", "rte", "--seeds", "42",
                     "--budgets", "paper", "--workers", "2"])  # fmt: skip
    names = [name for name, _, _ in launched]
    assert most_at_once == 2 and {threads for _, threads, _ in launched} == {1}
    assert names[:2] == [s.name for s in study.dense_grid("stsb")[:2]]  # both ready at the start
    assert all(done for name, _, done in launched if "_paper_" in name)  # the sweep waited for the whole dense grid
    assert any("_rte_" in name for name in names[:6]), names  # another task's dense grid filled the second worker meanwhile
    assert len(launched) <= 9  # after the failure, only the run already in flight finished


def test_the_expected_wall_time_is_the_median_of_the_seeds_run_alike_else_the_longest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb",), records_dir=tmp_path / "records",
                  precision=glue_study.BF16)  # fmt: skip
    finish_grid_and_sweep(study)
    asp = next(item for item in study.runs() if isinstance(item, RunSpec) and item.method == "asp" and item.seed == 42)
    here = glue_study.machine()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    made = {42: (2700.0, here), 43: (1200.0, here), 44: (1300.0, here | {"cpu_native_bf16": not here["cpu_native_bf16"]})}
    for seed, (wall, made_on) in made.items():
        record = finish(study, replace(asp, seed=seed), 80.0)
        glue_study.write_record(replace(asp, seed=seed).record_path, record | {
            "wall_s": wall, "precision": glue_study.BF16, "threads": 1, "environment": made_on})  # fmt: skip
    # Seeds 42 and 43 alike (the busy machine's 2700 s and 1200 s), seed 44 on the other kind of CPU: left out.
    assert glue_study.expected_wall_s(asp, threads=1) == statistics.median([2700.0, 1200.0])
    assert glue_study.expected_wall_s(asp, threads=None) == 2700.0  # two threads a run here: none alike, the longest
    assert glue_study.expected_wall_s(replace(asp, precision=glue_study.FP32), threads=1) == 2700.0


def test_finish_within_starts_only_the_runs_another_seed_says_will_end_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    study = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb",), seeds=(42, 43), records_dir=tmp_path / "records")
    monkeypatch.setattr(glue_study, "Study", lambda *args, **kwargs: study)
    for item in study.runs():  # seed 42 finished: 2 hours a paper run, 1 minute a short one, 10 minutes a dense one
        if isinstance(item, RunSpec) and item.seed == 42:
            record = finish(study, item, 80.0) | {"run_fingerprint": glue_study.run_fingerprint(item)}
            record["wall_s"] = {"paper": 7200.0, "short": 60.0, None: 600.0}[item.budget]
            glue_study.write_record(item.record_path, record)
    seed_43 = [item.name for item in study.runs() if isinstance(item, RunSpec) and item.seed == 43]
    assert len(seed_43) == 7 and sum("_short_" in name for name in seed_43) == 2
    launched: list[str] = []

    def fake_execute(spec: RunSpec, keep_checkpoints: bool, threads: int | None) -> dict | None:
        launched.append(spec.name)
        record = finish(study, spec, 80.0) | {"run_fingerprint": glue_study.run_fingerprint(spec)}
        glue_study.write_record(spec.record_path, record)
        return record

    def fake_rebuild(spec: RunSpec, threads: int | None) -> bool:
        launched.append(f"rebuild {spec.name}")
        spec.export_dir.mkdir(parents=True)
        return True

    monkeypatch.setattr(glue_study, "execute", fake_execute)
    monkeypatch.setattr(glue_study, "rebuild_export", fake_rebuild)
    dense = study.best_dense("stsb")
    shutil.rmtree(dense.export_dir)  # a new machine: the rebuild (10 min) and a short run (1 min) fit in an hour
    glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--finish-within", "1"])
    assert launched == [f"rebuild {dense.name}", *(name for name in seed_43 if "_short_" in name)]
    assert "5 runs left are not expected to end within --finish-within" in capsys.readouterr().out
    nxm_paper = next(item for item in study.runs() if isinstance(item, RunSpec) and item.method == "nxm_paper")
    assert glue_study.expected_wall_s(nxm_paper) == 7200.0  # its own record
    nxm_paper.record_path.unlink()
    assert glue_study.expected_wall_s(nxm_paper) == 1.5 * 7200.0  # none of its seeds: the longest paper run, and room
    assert glue_study.expected_wall_s(replace(nxm_paper, task="rte")) is None  # no run of the task has finished
    shutil.rmtree(dense.export_dir)
    launched.clear()
    glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--finish-within", "0.1"])  # 6 min: no rebuild
    assert launched == []
    with pytest.raises(SystemExit):
        glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--finish-within", "soon"])
    assert "'soon' is not a number of hours > 0" in capsys.readouterr().err


def test_a_short_task_gets_a_shorter_zstep_interval_for_its_budgets_fewest_zsteps() -> None:
    def spec(task: str, method: str = "nxm", budget: str = "paper") -> RunSpec:
        return RunSpec(method, task, 42, glue_study.BUDGETS[budget].epochs, 1e-4, Path("/w"), "../shared/data/glue", budget)

    assert glue_study.steps_per_epoch(spec("rte")) == 78  # 2490 examples, batch 32
    assert glue_study.zstep_args(spec("rte")) == {"update_every": 19}  # 390 ADMM steps / 20
    assert glue_study.zstep_args(spec("stsb")) == {}  # 900 ADMM steps: 45 Z-steps every 20
    assert glue_study.zstep_args(spec("rte", "asp")) == {}  # no ADMM
    assert glue_study.zstep_args(spec("rte", "nxm_paper")) == {}  # Z-step per epoch, as the paper's code
    assert glue_study.zstep_args(spec("rte", budget="short")) == {"update_every": 9}  # 39 ADMM steps / 4
    assert glue_study.zstep_args(spec("stsb", budget="short")) == {}  # 90 ADMM steps: 4 Z-steps every 20


def test_a_record_stays_current_on_another_machine_and_goes_stale_when_the_run_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "a", "../shared/data/glue", records_dir=tmp_path / "r")
    elsewhere = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "b", "/data/glue", records_dir=tmp_path / "r")
    assert glue_study.run_fingerprint(spec) == glue_study.run_fingerprint(elsewhere)
    glue_study.write_record(spec.record_path, {"run_fingerprint": glue_study.run_fingerprint(spec)})
    started: list[list[str]] = []
    monkeypatch.setattr(glue_study, "run_command", lambda command, log, threads: started.append(command) or (1, 0.0))
    assert glue_study.execute(elsewhere) is not None and started == []
    spec.epochs = 3  # another budget under the same name: the record is stale, the run starts again (and fails here)
    assert glue_study.execute(spec) is None and len(started) == 1
    assert not spec.record_path.exists() and (spec.record_path.parent / "stale" / spec.record_path.name).exists()


def test_the_edited_config_carries_the_run_and_the_dense_grid_stops_early(tmp_path: Path) -> None:
    spec = RunSpec("dense", "stsb", 42, 10, 2e-4, tmp_path, "glue")
    spec.write_config()
    config = yaml.safe_load(spec.config_path.read_text())
    assert config["model"]["init_args"]["learning_rate"] == 2e-4 and config["trainer"]["max_epochs"] == 10
    callbacks = {c["class_path"]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks["callbacks.SavePretrainedCallback"]["export_dir"] == str(spec.export_dir)
    assert callbacks[glue_study.EARLY_STOPPING] == {"monitor": "val/score", "mode": "max", "patience": 3}
    nxm = RunSpec("nxm", "rte", 42, 10, 1e-4, tmp_path, "glue", "paper",
                  callback_args={glue_study.ADMM_CALLBACK: {"update_every": 19}})  # fmt: skip
    nxm.write_config()
    config = yaml.safe_load(nxm.config_path.read_text())
    callbacks = {c["class_path"]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks[glue_study.ADMM_CALLBACK]["update_every"] == 19 and glue_study.EARLY_STOPPING not in callbacks
    assert "--data.train_subset_seed" not in nxm.command()
    assert RunSpec("asp", "sst2", 42, 1, 1e-4, tmp_path, "glue", "short").command()[-4:] == [
        "--data.max_train_samples", "8000", "--data.train_subset_seed", "0"
    ]  # fmt: skip


def report_records(tmp_path: Path) -> list[dict]:
    """A study finished on every task for seeds 42 and 43 of asp, asp_kd, nxm and nxm_kd (the paper budget)."""
    study = Study(tmp_path / "work", "../shared/data/glue", seeds=(42, 43), budgets=("paper",), records_dir=tmp_path / "records")
    records = []
    for task in glue_study.TASKS:
        records += [finish(study, s, v) for s, v in zip(study.dense_grid(task), (80.0, 82.0, 70.0))]
    records += [finish(study, s, v) for s, v in zip(study.sweep("asp"), (78.0, 79.0, 60.0))]  # best: 5e-5
    records += [finish(study, s, v) for s, v in zip(study.sweep("nxm"), (81.0, 75.0, 60.0))]  # best: 1e-4
    scores = {("asp", 43): 77.0, ("asp_kd", 42): 80.0, ("asp_kd", 43): 79.0, ("nxm", 43): 80.0,
              ("nxm_kd", 42): 81.5, ("nxm_kd", 43): 80.5, ("nxm_paper", 42): 70.0}  # fmt: skip
    for item in study.runs():
        if isinstance(item, RunSpec) and study.record(item) is None:
            records.append(
                finish(study, item, scores.get((item.method, item.seed), {"asp": 79.0, "nxm": 81.0}.get(item.method, 0.0)))
            )
    return records


def test_the_report_takes_the_chosen_runs_pairs_them_by_seed_and_checks_the_goals(tmp_path: Path) -> None:
    records = report_records(tmp_path)
    cells = study_report.study_cells(records, "paper")
    assert cells[("dense", "rte")] == {42: 82.0, 43: 82.0}  # the grid's best: every seed's start
    assert cells[("asp", "stsb")] == {42: 79.0, 43: 77.0}  # lr 5e-5: the sweep's 78.0 at 1e-4 is not a study run
    assert cells[("nxm", "stsb")] == {42: 81.0, 43: 80.0}
    assert cells[("asp", "rte")] == {42: 79.0, 43: 77.0}
    final = study_report.study_cells(records, "paper", at="final_score")
    assert final[("asp", "rte")] == {42: 78.0, 43: 76.0} and final[("dense", "rte")][42] == 82.0  # dense: its export
    paired = "\n".join(study_report.paired_lines(cells, "paper"))
    assert "| nxm - asp | +2.5 ± 0.7 (n=2) |" in paired and "| nxm_kd - asp_kd | +1.5 ± 0.0 (n=2) |" in paired
    assert study_report.goal_lines(cells) == [
        "- nxm >= asp + 1.0 on the 4-task average: nxm 80.5 - asp 78.0 = +2.5: **met**, provisional (seeds 42, 43 of "
        "the 3 planned).",
        "- nxm_kd >= asp_kd + 0.5 on the 4-task average: nxm_kd 81.0 - asp_kd 79.5 = +1.5: **met**, provisional "
        "(seeds 42, 43 of the 3 planned).",
        "- nxm_kd >= dense - 1.0 on the 4-task average: nxm_kd 81.0 - dense 82.0 = -1.0: **met**, provisional "
        "(seeds 42, 43 of the 3 planned).",
    ]
    for task in study_report.TASKS:  # the third seed on all four tasks: the verdict is final
        for method, offset in (("nxm", 1.0), ("asp", -1.0)):
            cells[(method, task)][44] = statistics.mean(cells[(method, task)].values()) + offset
    assert study_report.goal_lines(cells)[0] == (
        "- nxm >= asp + 1.0 on the 4-task average: nxm 80.8 - asp 77.7 = +3.2: **met** (seeds 42, 43, 44 of the 3 planned)."
    )
    assert [study_report.signed(d) for d in (-0.04, -0.06, 0.0)] == ["+0.0", "-0.1", "+0.0"]  # no "-0.0"
    for record in records:  # seed 43's RTE runs started from a dense export rebuilt on another machine
        if record["task"] == "rte" and record["seed"] == 43 and record["budget"]:
            record["dense_start_score"] = 83.0 if record["method"] == "asp" else 84.0
        if record["task"] == "rte" and record["method"] == "nxm_paper":  # one seed only: not a start the others share
            record["dense_start_score"] = 99.0
    starts = study_report.study_cells(records, "paper")[("dense", "rte")]
    assert starts == {42: 82.0, 43: pytest.approx((83.0 + 4 * 84.0) / 5)}  # asp's start and the other four methods'
    # nxm and asp of seed 43 started from different builds: the note says so; nxm_kd and asp_kd share theirs
    assert study_report.split_pairs_note(records, "paper")[0].endswith(
        "difference above includes theirs): RTE seed 43: nxm - asp (84.00 vs 83.00)."
    )
    for record in records:
        record.pop("dense_start_score", None)
    assert study_report.split_pairs_note(records, "paper") == []
    del cells[("nxm_kd", "cola")]
    assert study_report.goal_lines(cells)[1].endswith("**not yet measured** (both finished on: SST-2, STS-B, RTE).")


def test_the_cut_table_follows_each_chosen_run_from_before_its_cut_to_its_best(tmp_path: Path) -> None:
    records = report_records(tmp_path)
    for record in records:
        if record["method"] == "asp" and record["task"] == "rte":
            record["metrics"] |= {"prune_score_before": 82.0, "prune_score_after": 60.0 + record["seed"] - 42}
        if record["method"] == "nxm" and record["task"] == "cola" and record["seed"] == 42:
            record["metrics"] |= {"prune_score_before": 70.0, "prune_score_after": 71.0}
    rows = {line.split(" | ")[0].removeprefix("| "): line.strip("| ").split(" | ")[1:] for line in
            study_report.cut_table(records, "paper")[2:]}  # fmt: skip
    columns = list(study_report.TASKS)
    assert rows["asp"][columns.index("rte")] == "82.0 → 60.5 → 78.0 (n=2)"  # best: seed 42's 79.0 and 43's 77.0
    assert rows["nxm"][columns.index("cola")] == "70.0 → 71.0 → 81.0"
    assert rows["asp"][columns.index("cola")] == rows["asp_kd"][columns.index("rte")] == "-"  # no cut recorded


def write_export(directory: Path, weights: dict, layouts: dict[str, str]) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file(weights, str(directory / "model.safetensors"))
    layers = {name: {"pattern": "2:4", "layout": layout} for name, layout in layouts.items()}
    (directory / "sparsity.json").write_text(json.dumps({"layers": layers}))


def test_each_sparse_run_records_how_much_of_its_mask_magnitude_keeps_too_and_the_report_tabulates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    dense = torch.tensor([[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0]])  # magnitude keeps 0, 1 and 6, 7
    sparse = torch.tensor([[4.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]])  # keeps 0, 2 and 6, 7: 3 of its 4 agree
    write_export(tmp_path / "dense", {"a": dense, "b": dense.t().clone()}, {})
    write_export(tmp_path / "sparse", {"a": sparse, "b": sparse.t().clone()}, {"a": "out_in", "b": "in_out"})
    assert glue_study.kept_share(tmp_path / "sparse", tmp_path / "dense") == 6 / 8
    glue_study.note_dense_build(tmp_path / "dense", 85.0)  # the dense model's dev score, as the driver notes it

    # The driver measures it when a sparse run finishes, against the run's dense start (the teacher of a _kd run).
    for method in ("nxm", "nxm_kd"):
        spec = RunSpec(method, "rte", 42, 10, 1e-4, tmp_path / "work", "glue", "paper", records_dir=tmp_path / "records")
        spec.model, spec.teacher = (None, str(tmp_path / "dense")) if method == "nxm_kd" else (str(tmp_path / "dense"), None)

        def finish_run(command: list[str], log: object, threads: int | None, spec: RunSpec = spec) -> tuple[int, float]:
            shutil.copytree(tmp_path / "sparse", spec.export_dir)
            write_events(spec.run_dir, {"val/score": [(78, 60.0)]})
            return 0, 1.0

        monkeypatch.setattr(glue_study, "run_command", finish_run)
        record = glue_study.execute(spec)
        assert record["kept_share_of_magnitude_mask"] == 6 / 8 and record["dense_start_score"] == 85.0

    records = report_records(tmp_path / "report")
    assert study_report.agreement_table(records, "paper") == []  # no run measured yet: no table
    for record in records:
        if record["method"] == "nxm" and record["task"] == "rte":
            record["kept_share_of_magnitude_mask"] = 0.75 if record["seed"] == 42 else 0.85
        if record["method"] == "nxm" and record["task"] == "stsb" and record["learning_rate"] == 5e-5:
            record["kept_share_of_magnitude_mask"] = 0.1  # a sweep run the study did not choose: not tabulated
    rows = {line.split(" | ")[0].removeprefix("| "): line.strip("| ").split(" | ")[1:]
            for line in study_report.agreement_table(records, "paper")[2:]}  # fmt: skip
    assert rows["nxm"][list(study_report.TASKS).index("rte")] == "80.0% (n=2)"
    assert rows["nxm"][list(study_report.TASKS).index("stsb")] == "-" and rows["asp"] == ["-"] * 4


def test_the_curves_plot_takes_the_first_seeds_chosen_runs_of_each_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = report_records(tmp_path)
    assert not study_report.plot_dev_curves(records, tmp_path / "curves.png")  # no evaluations recorded
    for record in records:
        record["metrics"]["val_scores"] = [[9, 70.0], [19, record["metrics"]["best_score"]]]
    plotted: dict[object, list[str]] = {}

    def spy(ax, x, y, style, **kwargs):  # noqa: ANN001, ANN202
        plotted.setdefault(ax, []).append(kwargs.get("label", "cut"))

    monkeypatch.setattr("matplotlib.axes.Axes.plot", spy)
    assert study_report.plot_dev_curves(records, tmp_path / "curves.png") and (tmp_path / "curves.png").exists()
    plotted = {ax.get_title().split(",")[0]: labels for ax, labels in plotted.items()}
    assert set(plotted) == {"CoLA (MCC)", "SST-2 (acc)", "STS-B (Pearson/Spearman)", "RTE (acc)"}
    # One line per method (seed 42 at its chosen rate: not the sweep's other points, not seed 43), no cut recorded.
    assert sorted(plotted["STS-B (Pearson/Spearman)"]) == ["asp", "asp_fisher", "asp_kd", "nxm", "nxm_kd", "nxm_paper"]


def test_report_rewrites_only_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    page = "# Results\n\nhand-written intro\n\n{begin}\n{table}\n{end}\n\nanalysis\n"
    results.write_text(page.format(begin=study_report.BEGIN, table="old table", end=study_report.END))
    study_report.write_results(results, [study_report.BEGIN, "new table", study_report.END])
    assert results.read_text() == page.format(begin=study_report.BEGIN, table="new table", end=study_report.END)


def test_the_machine_list_has_one_line_per_machine_whatever_the_commits(tmp_path: Path) -> None:
    amd = {"packages": {"torch": "2.13.0+cpu"}, "python": "3.11.7", "machine": "x86_64, 2 CPUs, AMD EPYC",
           "accelerator": "none (CPU)"}  # fmt: skip
    records = [
        {"environment": amd | {"git_commit": "a" * 40, "git_dirty": False}},
        {"environment": amd | {"git_commit": "b" * 40, "git_dirty": True}},
        {"environment": amd | {"cpu_native_bf16": True, "git_commit": "b" * 40, "git_dirty": False}},
    ]
    lines = study_report.environment_lines(records)
    assert sorted(line.split(";")[0] for line in lines[:-1]) == ["- x86_64, 2 CPUs, AMD EPYC",
                                                                 "- x86_64, 2 CPUs, AMD EPYC (native bf16)"]  # fmt: skip
    assert lines[-1] == f"- commits: {'a' * 10}, {'b' * 10}, {'b' * 10} (+ local changes)"


def test_records_load_in_finishing_order(tmp_path: Path) -> None:
    for name, finished in (("b", "2026-01-02"), ("a", "2026-01-03"), ("c", "2026-01-01")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": name, "finished_at": finished}))
    assert [r["name"] for r in study_report.load_records(tmp_path)] == ["c", "b", "a"]


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
    command = [sys.executable, "cli.py", "fit", "--config", "configs/glue.yaml"]
    record = main_job.main_job_record("stsb", 43, "x", tmp_path, command, wall_s=600.0)
    assert record["command"] == "python cli.py fit --config configs/glue.yaml" and record["convergence"] == summary
    assert record["seed"] == 43
    row = main_job.summary_row(record)
    assert "**85.00**" in row and "84.30 -> 84.10 (+0.20)" in row and ("| yes |" in row) == converged


def test_a_missing_dense_export_is_rebuilt_from_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    fingerprint = glue_study.run_fingerprint(spec)
    glue_study.write_record(spec.record_path, {"name": spec.name, "metrics": {"best_score": 60.0},
                                               "run_fingerprint": fingerprint})  # fmt: skip
    spec.run_dir.mkdir(parents=True)  # what the finished run left, which must not stop the rebuild
    (spec.run_dir / "fingerprint").write_text(fingerprint)
    (spec.run_dir / "fit_done.json").write_text('{"wall_s": 1.0, "cpu_s": 1.0}')

    def rerun(command: list[str], log: object, threads: int | None) -> tuple[int, float]:
        assert command == spec.command() and not (spec.run_dir / "fit_done.json").exists()
        # It stops at the first epoch that scores the record's best (an equal score counts).
        callbacks = yaml.safe_load(spec.config_path.read_text())["trainer"]["callbacks"]
        early = next(c["init_args"] for c in callbacks if c["class_path"] == glue_study.EARLY_STOPPING)
        assert 59.99 < early["stopping_threshold"] < 60.0 and early["patience"] == glue_study.DENSE_PATIENCE
        spec.export_dir.mkdir(parents=True)
        write_events(spec.run_dir, {"val/score": [(78, 59.0), (156, 60.5)]})
        return 0, 1.0

    monkeypatch.setattr(glue_study, "run_command", rerun)
    assert glue_study.rebuild_export(spec)
    record = json.loads(spec.record_path.read_text())
    assert record["metrics"]["best_score"] == 60.0 and [r["best_score"] for r in record["rebuilds"]] == [60.5]
    assert record["rebuilds"][0]["best_step"] == 156
    assert glue_study.current_record(spec) is not None  # the planned run, without the threshold, stays current
    # The sparse runs that start from the rebuild say so; an export without the note is the original run's.
    assert glue_study.dense_start_score(spec.export_dir, spec.records_dir) == 60.5
    (spec.export_dir / glue_study.DENSE_BUILD).unlink()
    assert glue_study.dense_start_score(spec.export_dir, spec.records_dir) == 60.0


def test_a_killed_run_resumes_from_its_last_checkpoint_and_its_void_events_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    # What a session's end leaves: the run's marker, events up to its checkpoint, the checkpoint, then events after it.
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "fingerprint").write_text(glue_study.run_fingerprint(spec))
    write_events(spec.run_dir, {"val/score": [(78, 50.0), (156, 55.0)], "train/loss": [(150, 0.75)]})
    time.sleep(0.05)
    last = spec.run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_text("checkpoint")
    time.sleep(0.05)
    write_events(spec.run_dir, {"train/loss": [(180, 0.5)], "prune/score_after": [(170, 40.0)]})  # void: after it
    commands: list[list[str]] = []

    def attempt(command: list[str], log: object, threads: int | None) -> tuple[int, float]:
        commands.append(command)
        if len(commands) == 1:
            return 143, 1.0  # stopped by SIGTERM (cli.py's exit status for Lightning's graceful stop)
        if len(commands) == 2:
            write_events(spec.run_dir, {"val/score": [(234, 58.0)], "train/loss": [(160, 0.625), (190, 0.375)]})
            return 0, 1.0
        return 1, 1.0  # a failed run

    monkeypatch.setattr(glue_study, "run_command", attempt)
    assert glue_study.train(spec) is None and (spec.run_dir / "fingerprint").exists()  # stopped: still resumable
    assert not (spec.run_dir / "fit_done.json").exists()
    finished = glue_study.train(spec)
    assert finished is not None and finished[2] == 2.0  # the CPU seconds of both attempts
    assert commands[0][-2:] == commands[1][-2:] == ["--ckpt_path", str(last)]
    scalars = glue_study.read_scalars(spec.run_dir)
    assert scalars["val/score"] == [(78, 50.0), (156, 55.0), (234, 58.0)]
    assert scalars["train/loss"] == [(150, 0.75), (160, 0.625), (190, 0.375)] and "prune/score_after" not in scalars
    # Finished but not recorded (the driver was killed in between): not trained again.
    assert glue_study.train(spec) is not None and len(commands) == 2
    # The same name with another config (here another budget) is another run: from scratch; and so after a failure.
    spec.epochs = 3
    assert glue_study.train(spec) is None and "--ckpt_path" not in commands[2]
    assert not (spec.run_dir / "fingerprint").exists() and not last.exists()


def test_a_run_left_training_keeps_the_study_locked_and_stopping_the_driver_stops_its_runs(tmp_path: Path) -> None:
    log = open(tmp_path / "log", "w")  # noqa: SIM115  (the children write to it)
    results: list[tuple[int, float]] = []

    def start(seconds: float) -> threading.Thread:
        command = [sys.executable, "-c", f"import time; time.sleep({seconds})"]
        thread = threading.Thread(target=lambda: results.append(glue_study.run_command(command, log, None)))
        thread.start()
        time.sleep(0.5)
        return thread

    with glue_study.study_lock(tmp_path):
        orphan = start(2.0)
    # The driver's lock is gone (as when it is killed), its run is not: a second driver must not start beside it.
    with pytest.raises(SystemExit, match="Another study process"), glue_study.study_lock(tmp_path):
        pass
    orphan.join()
    with glue_study.study_lock(tmp_path):  # free once the run ended
        stopped = start(60.0)
        glue_study.stop_children()
        stopped.join(timeout=10)
    glue_study._stopping.clear()
    log.close()
    assert not stopped.is_alive() and results == [(0, pytest.approx(0.0, abs=1.0)), (-15, pytest.approx(0.0, abs=1.0))]


def test_each_run_keeps_its_precision_out_of_the_fingerprint_and_resumes_and_rebuilds_in_the_one_it_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    bf16 = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records",
                   precision="bf16-mixed")  # fmt: skip
    assert "--trainer.precision" not in fp32.command() and bf16.command()[-2:] == ["--trainer.precision", "bf16-mixed"]
    # A record made in fp32 (all records before precisions were chosen) stays current on a bf16 machine.
    assert glue_study.run_fingerprint(fp32) == glue_study.run_fingerprint(bf16)
    commands: list[list[str]] = []

    def stopped_then_done(command: list[str], log: object, threads: int | None) -> tuple[int, float]:
        commands.append(command)
        if len(commands) == 1:
            last = bf16.run_dir / "checkpoints" / "last.ckpt"
            last.parent.mkdir(parents=True)
            last.write_text("checkpoint")
            return 143, 1.0
        write_events(bf16.run_dir, {"val/score": [(78, 60.0)]})
        bf16.export_dir.mkdir(parents=True, exist_ok=True)
        return 0, 1.0

    monkeypatch.setattr(glue_study, "run_command", stopped_then_done)
    assert glue_study.train(bf16) is None  # stopped midway in bf16 ...
    assert glue_study.execute(fp32) is not None  # ... and resumed by a driver that starts new runs in fp32
    assert commands[1][-4:] == ["--trainer.precision", "bf16-mixed", "--ckpt_path", str(bf16.run_dir / "checkpoints/last.ckpt")]
    assert json.loads(fp32.record_path.read_text())["precision"] == "bf16-mixed"
    # Rebuilding its missing export on a machine whose new runs are fp32 trains in the record's bf16 again.
    shutil.rmtree(bf16.export_dir)
    rebuild = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    assert glue_study.rebuild_export(rebuild) and commands[2][-2:] == ["--trainer.precision", "bf16-mixed"]


@pytest.mark.parametrize(
    ("cuda", "flags", "expected"),
    [
        (None, {"avx512_bf16"}, "bf16-mixed"),
        (None, {"avx2"}, "32-true"),
        ((9, 0), set(), "bf16-mixed"),
        ((7, 5), set(), "32-true"),
    ],  # fp16 (an old GPU's choice) is not one of the study's precisions
)
def test_auto_precision_is_bf16_only_where_bf16_is_native(
    monkeypatch: pytest.MonkeyPatch, cuda: tuple[int, int] | None, flags: set[str], expected: str
) -> None:
    import torch

    from nxm_lightning.sparsity import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: cuda)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: flags)
    assert glue_study.resolve_precision("auto") == expected
    assert glue_study.resolve_precision("32-true") == "32-true"


def test_a_missing_dense_export_is_rebuilt_by_one_worker_while_the_other_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb", "rte"), seeds=(42,), budgets=("paper",),
                  records_dir=tmp_path / "records")  # fmt: skip
    for spec, score in zip(study.dense_grid("stsb"), (84.0, 86.0, 85.0)):
        record = finish(study, spec, score)
        record["run_fingerprint"] = glue_study.run_fingerprint(spec)
        glue_study.write_record(spec.record_path, record)
        shutil.rmtree(spec.export_dir)  # a new machine: the records are there, the exports are not
    monkeypatch.setattr(glue_study, "Study", lambda *args, **kwargs: study)
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    run_started = threading.Event()

    def fake_rebuild(spec: RunSpec, threads: int | None) -> bool:
        with lock:
            events.append(("rebuild start", spec.name))
        run_started.wait(timeout=10)  # a driver that waits for the rebuild before any run never sets it
        spec.export_dir.mkdir(parents=True)
        with lock:
            events.append(("rebuild end", spec.name))
        return True

    def fake_execute(spec: RunSpec, keep_checkpoints: bool, threads: int | None) -> dict | None:
        with lock:
            events.append(("run", spec.name))
            run_started.set()
            if len([e for e in events if e[0] == "run"]) >= 3:
                return None  # stop the study here
        time.sleep(0.3)
        return finish(study, spec, 80.0)

    monkeypatch.setattr(glue_study, "rebuild_export", fake_rebuild)
    monkeypatch.setattr(glue_study, "execute", fake_execute)
    glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--workers", "2"])
    assert ("rebuild start", study.dense_grid("stsb")[1].name) in events  # the best of the grid
    before_rebuilt = events[: events.index(("rebuild end", study.dense_grid("stsb")[1].name))]
    runs_meanwhile = [name for kind, name in before_rebuilt if kind == "run"]
    assert runs_meanwhile and all("_rte_" in name for name in runs_meanwhile), events
    assert len([e for e in events if e[0] == "rebuild start"]) == 1


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
    metrics = glue_study.run_metrics(tmp_path)
    assert (metrics["best_score"], metrics["final_score"]) == (pytest.approx(best), pytest.approx(final))


def test_a_config_edited_while_a_run_trains_leaves_its_record_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    trained_under = glue_study.run_fingerprint(spec)
    original = glue_study.method_config

    def edited(method: str) -> dict:
        config = original(method)
        config["model"]["init_args"]["weight_decay"] = 0.1
        return config

    def train_then_edit(command: list[str], log: object, threads: int | None) -> tuple[int, float]:
        write_events(spec.run_dir, {"val/score": [(78, 60.0)]})
        monkeypatch.setattr(glue_study, "method_config", edited)  # someone edits configs/ while the run trains
        return 0, 1.0

    monkeypatch.setattr(glue_study, "run_command", train_then_edit)
    assert glue_study.execute(spec) is not None
    assert json.loads(spec.record_path.read_text())["run_fingerprint"] == trained_under
    assert glue_study.current_record(spec) is None  # stale under the edited config: it runs again


def test_a_run_stopped_before_its_first_checkpoint_starts_again_in_the_drivers_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bf16 = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records",
                   precision="bf16-mixed")  # fmt: skip
    commands: list[list[str]] = []
    monkeypatch.setattr(glue_study, "run_command", lambda command, log, threads: commands.append(command) or (143, 1.0))
    assert glue_study.train(bf16) is None  # stopped in its first epoch: no checkpoint
    fp32 = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    assert glue_study.train(fp32) is None
    assert "--trainer.precision" not in commands[1] and "--ckpt_path" not in commands[1]
