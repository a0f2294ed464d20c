"""The study's plan (benchmarks/study/plan.py): its order, its choices, each run's config and command."""

from __future__ import annotations

from pathlib import Path

import yaml
from study_helpers import finish, finish_grid_and_sweep, pending, small_study

from benchmarks.study import plan, report
from benchmarks.study.plan import RunSpec, Study


def test_the_plan_runs_the_dense_grid_first_and_starts_every_sparse_run_from_its_best(tmp_path: Path) -> None:
    study = small_study(tmp_path)
    grid = study.dense_grid("stsb")
    assert [spec.learning_rate for spec in grid] == list(plan.DENSE_LRS)
    assert all(spec.epochs == plan.DENSE_EPOCHS and spec.budget is None for spec in grid)
    assert pending(study)[:3] == [spec.name for spec in grid] and set(pending(study)[3:]) == {"wait"}
    for spec, score in zip(grid, (84.0, 86.0, 85.0)):
        finish(study, spec, score)
    sweep = [item for item in study.runs() if isinstance(item, RunSpec) and item.budget == "paper"]
    assert [(s.method, s.learning_rate) for s in sweep[:6]] == [(m, lr) for lr in plan.SPARSE_LRS for m in ("asp", "nxm")]
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
    assert lrs[("asp", 42)] == lrs[("asp_kd", 43)] == plan.SPARSE_LRS[1]
    assert lrs[("nxm", 43)] == lrs[("nxm_kd", 42)] == plan.SPARSE_LRS[0]
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
    pairs = [(first, second) for first, second, _ in report.GOALS if "dense" not in (first, second)]
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


def test_a_short_task_gets_a_shorter_zstep_interval_for_its_budgets_fewest_zsteps() -> None:
    def spec(task: str, method: str = "nxm", budget: str = "paper") -> RunSpec:
        return RunSpec(method, task, 42, plan.BUDGETS[budget].epochs, 1e-4, Path("/w"), "../shared/data/glue", budget)

    assert plan.steps_per_epoch(spec("rte")) == 78  # 2490 examples, batch 32
    assert plan.zstep_args(spec("rte")) == {"update_every": 19}  # 390 ADMM steps / 20
    assert plan.zstep_args(spec("stsb")) == {}  # 900 ADMM steps: 45 Z-steps every 20
    assert plan.zstep_args(spec("rte", "asp")) == {}  # no ADMM
    assert plan.zstep_args(spec("rte", "nxm_paper")) == {}  # Z-step per epoch, as the paper's code
    assert plan.zstep_args(spec("rte", budget="short")) == {"update_every": 9}  # 39 ADMM steps / 4
    assert plan.zstep_args(spec("stsb", budget="short")) == {}  # 90 ADMM steps: 4 Z-steps every 20


def test_the_edited_config_carries_the_run_and_the_dense_grid_stops_early(tmp_path: Path) -> None:
    spec = RunSpec("dense", "stsb", 42, 10, 2e-4, tmp_path, "glue")
    spec.write_config()
    config = yaml.safe_load(spec.config_path.read_text())
    assert config["model"]["init_args"]["learning_rate"] == 2e-4 and config["trainer"]["max_epochs"] == 10
    callbacks = {c["class_path"]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks["callbacks.SavePretrainedCallback"]["export_dir"] == str(spec.export_dir)
    assert callbacks[plan.EARLY_STOPPING] == {"monitor": "val/score", "mode": "max", "patience": 3}
    nxm = RunSpec("nxm", "rte", 42, 10, 1e-4, tmp_path, "glue", "paper",
                  callback_args={plan.ADMM_CALLBACK: {"update_every": 19}})  # fmt: skip
    nxm.write_config()
    config = yaml.safe_load(nxm.config_path.read_text())
    callbacks = {c["class_path"]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks[plan.ADMM_CALLBACK]["update_every"] == 19 and plan.EARLY_STOPPING not in callbacks
    assert "--data.train_subset_seed" not in nxm.command()
    assert RunSpec("asp", "sst2", 42, 1, 1e-4, tmp_path, "glue", "short").command()[-4:] == [
        "--data.max_train_samples", "8000", "--data.train_subset_seed", "0"
    ]  # fmt: skip
