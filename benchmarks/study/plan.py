"""What the GLUE study runs: its tasks, seeds, methods and budgets, one run's spec (config, command, paths,
fingerprint) and the plan that orders the runs from the records so far.

Pure planning: nothing here trains, so the report and ``plan`` commands can replay every choice (the best dense run,
each method's swept learning rate) from committed records alone. ``benchmarks/glue_study.py`` documents the plan.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
RECORDS = REPO / "benchmarks" / "records" / "study"
TASKS = ("stsb", "rte", "cola", "sst2")
SEEDS = (42, 43, 44)
# The dense grid, the learning-rate sweep and the one-seed methods run at the first seed; every seed's sparse runs
# start from that dense grid's best, so `--seeds` selects sparse runs only (`--seeds 44` must not plan a new grid).
FIRST_SEED = SEEDS[0]
METHOD_CONFIGS = {
    "dense": "glue_dense.yaml",
    "asp": "glue_asp.yaml",
    "asp_kd": "glue_asp_kd.yaml",
    "asp_fisher": "glue_asp_fisher.yaml",
    "nxm": "glue_nxm.yaml",
    "nxm_kd": "glue_kd.yaml",
    "nxm_paper": "glue_paper.yaml",
}
KD_METHODS = ("asp_kd", "nxm_kd")
# Whose sweep sets each method's learning rate.
LR_PARTNER = {"asp": "asp", "asp_kd": "asp", "asp_fisher": "asp", "nxm": "nxm", "nxm_kd": "nxm"}
DENSE_LRS = (5e-5, 1e-4, 2e-4)
DENSE_EPOCHS = 10
DENSE_PATIENCE = 3
SWEEP_TASK = "stsb"
SPARSE_LRS = (1e-4, 5e-5, 2e-4)  # in running order: the paper's range first
FP32 = "32-true"  # the shipped configs' precision (Lightning's default)
BF16 = "bf16-mixed"


def method_config(method: str) -> dict[str, Any]:
    """The parsed shipped config of ``method`` (a fresh copy each call: callers edit it)."""
    return yaml.safe_load((CONFIGS / METHOD_CONFIGS[method]).read_text())


@dataclass(frozen=True)
class Budget:
    """The epochs every sparse method gets after the dense stage, and which methods run at it."""

    epochs: int
    methods: tuple[str, ...]
    first_seed_only: tuple[str, ...] = ()
    fixed_lrs: dict[str, float] = field(default_factory=dict)  # no sweep at this budget: these learning rates
    min_zsteps: int = 4  # the fewest Z-steps an ADMM phase may hold: the Z-step interval shortens to give them


# Each budget's methods in running order: the two runs of each paired difference the goals are on next to each other,
# so that a session ending within a task's seed leaves whole pairs, each trained from one build of the dense model.
BUDGETS = {
    "paper": Budget(
        10, ("asp", "nxm", "asp_kd", "nxm_kd", "asp_fisher", "nxm_paper"), first_seed_only=("nxm_paper",), min_zsteps=20
    ),
    # The previous study's budget: its ADMM phase held 4-5 Z-steps (STS-B's 90 steps; RTE's 39 get 4 too).
    "short": Budget(1, ("asp", "nxm"), fixed_lrs={"asp": 2e-4, "nxm": 3e-4}),
}
# SST-2's 67k examples would take a day an epoch-set here: a fixed random subset (the same for every run).
TRAIN_SUBSETS = {"sst2": 8000}
TRAIN_SUBSET_SEED = 0
HARD_PRUNE_CALLBACK = "callbacks.HardPruneCallback"
EXPORT_CALLBACKS = ("callbacks.SavePretrainedCallback", HARD_PRUNE_CALLBACK)
ADMM_CALLBACK = "callbacks.NxMSparsifyCallback"
SRSTE_CALLBACK = "callbacks.SRSTECallback"
EARLY_STOPPING = "lightning.pytorch.callbacks.EarlyStopping"


@dataclass
class RunSpec:
    """One ``cli.py fit`` run of the study: what to run and where its outputs go."""

    method: str
    task: str
    seed: int
    epochs: int
    learning_rate: float
    work_dir: Path
    data_dir: str
    budget: str | None = None  # None: the dense stage
    model: str | None = None
    teacher: str | None = None
    callback_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    records_dir: Path = RECORDS
    # Lightning's precision flag. Not part of the fingerprint: each machine trains in its fastest precision that keeps
    # fp32 weights (bf16-mixed with native bf16, fp32 without), every record says which, and a run resumed or rebuilt
    # keeps the precision it started in.
    precision: str = FP32
    # An exploration's name for its change of the method's config (``study_explore.py``): the run's name starts with
    # it in place of the method's.
    variant: str | None = None
    # init_args of the model over the method's config (an exploration's variant: e.g. the distillation recipe).
    model_args: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        budget = f"_{self.budget}" if self.budget else ""
        return f"{self.variant or self.method}{budget}_lr{self.learning_rate:g}_{self.task}_s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.work_dir / "runs" / "study" / self.name

    @property
    def export_dir(self) -> Path:
        return self.work_dir / "exports" / self.name

    @property
    def record_path(self) -> Path:
        return self.records_dir / f"{self.name}.json"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "logs" / f"{self.name}.log"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "configs" / f"{self.name}.yaml"

    def edited_config(self) -> tuple[str, dict[str, dict[str, Any]]]:
        """The method's YAML with the model and callback edits (list items cannot be overridden from the command line),
        and the callback edits made, keyed by callback class path."""
        config = method_config(self.method)
        # The values the command line overrides too, so that the fingerprint does not change with the config's default.
        config["model"]["init_args"].update(self.model_args)
        config["model"]["init_args"]["learning_rate"] = self.learning_rate
        config["trainer"]["max_epochs"] = self.epochs
        callbacks = config["trainer"].setdefault("callbacks", [])
        if self.method == "dense":
            early = {"monitor": "val/score", "mode": "max", "patience": DENSE_PATIENCE}
            callbacks.append({"class_path": EARLY_STOPPING, "init_args": early})
        edits: dict[str, dict[str, Any]] = {}
        for callback in callbacks:
            args = callback.setdefault("init_args", {})
            wanted = dict(self.callback_args.get(callback["class_path"], {}))
            if callback["class_path"] in EXPORT_CALLBACKS:
                wanted["export_dir"] = str(self.export_dir)
            args.update(wanted)
            edits[callback["class_path"]] = wanted
        # A callback the config lacks (an exploration's SR-STE) is added, first: it trains before the config's cut.
        present = {callback["class_path"] for callback in callbacks}
        for class_path, args in self.callback_args.items():
            if class_path not in present and args:
                callbacks.insert(0, {"class_path": class_path, "init_args": dict(args)})
                edits[class_path] = dict(args)
        return yaml.safe_dump(config, sort_keys=False), edits

    def write_config(self) -> dict[str, dict[str, Any]]:
        """Write :meth:`edited_config` to ``config_path``; return the edits."""
        text, edits = self.edited_config()
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(text)
        return edits

    def command(self, with_precision: bool = True) -> list[str]:
        """The ``cli.py fit`` command: the edited YAML first, then the overrides (which take precedence).

        ``with_precision``: add ``--trainer.precision`` unless it is the configs' fp32 (the fingerprint leaves it out).
        """
        args = [
            sys.executable, "cli.py", "fit", "--config", str(self.config_path),
            "--seed_everything", str(self.seed),
            "--data.task_name", self.task,
            "--data.data_dir", self.data_dir,
            "--trainer.max_epochs", str(self.epochs),
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(self.work_dir / "runs"),
            "--trainer.logger.init_args.name", "study",
            "--trainer.logger.init_args.version", self.name,
            "--model.init_args.learning_rate", f"{self.learning_rate:g}",
        ]  # fmt: skip
        if self.task in TRAIN_SUBSETS:
            args += ["--data.max_train_samples", str(TRAIN_SUBSETS[self.task])]
            args += ["--data.train_subset_seed", str(TRAIN_SUBSET_SEED)]
        if self.model:
            args += ["--model.init_args.model_name_or_path", self.model]
        if self.teacher:
            args += ["--model.init_args.teacher", self.teacher]
        if with_precision and self.precision != FP32:
            args += ["--trainer.precision", self.precision]
        return args


def run_fingerprint(spec: RunSpec) -> str:
    """A hash of the run's YAML and its command line, to tell a stale record; without the interpreter's path, the work
    dir and the data dir, so that the records stay current on another machine."""
    text = spec.edited_config()[0] + "\0".join(spec.command(with_precision=False)[1:])
    text = text.replace(str(spec.work_dir), "<work>").replace(spec.data_dir, "<glue>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Waiting(Exception):
    """A run cannot be planned yet: an earlier run it depends on has not finished (or failed)."""


@dataclass
class Study:
    """Plans the study's runs from the records so far; :meth:`runs` yields them in running order."""

    work_dir: Path
    data_dir: str
    tasks: tuple[str, ...] = TASKS
    seeds: tuple[int, ...] = SEEDS
    budgets: tuple[str, ...] = tuple(BUDGETS)
    records_dir: Path = RECORDS
    known: dict[str, dict[str, Any]] | None = None  # records by run name instead of records_dir (the report)
    precision: str = FP32  # of the runs started now (resolved: not "auto")

    def spec(self, method: str, task: str, seed: int, learning_rate: float, budget: str | None = None) -> RunSpec:
        epochs = DENSE_EPOCHS if budget is None else BUDGETS[budget].epochs
        spec = RunSpec(method, task, seed, epochs, learning_rate, self.work_dir, self.data_dir, budget,
                       records_dir=self.records_dir, precision=self.precision)  # fmt: skip
        if budget is not None:
            export = str(self.best_dense(task).export_dir)
            spec.teacher, spec.model = (export, None) if method in KD_METHODS else (None, export)
            zsteps = zstep_args(spec) if self.known is None else {}  # the report needs no data files
            spec.callback_args = {ADMM_CALLBACK: zsteps} if zsteps else {}
        return spec

    def record(self, spec: RunSpec) -> dict[str, Any] | None:
        if self.known is not None:
            return self.known.get(spec.name)
        return json.loads(spec.record_path.read_text()) if spec.record_path.exists() else None

    def best(self, specs: list[RunSpec]) -> RunSpec:
        """The spec whose record has the best dev score; Waiting while any has no record."""
        scored = [(self.record(spec), spec) for spec in specs]
        missing = [spec.name for record, spec in scored if record is None]
        if missing:
            raise Waiting(f"needs {', '.join(missing)}")
        return max(scored, key=lambda item: item[0]["metrics"]["best_score"])[1]

    def dense_grid(self, task: str) -> list[RunSpec]:
        return [self.spec("dense", task, FIRST_SEED, lr) for lr in DENSE_LRS]

    def best_dense(self, task: str) -> RunSpec:
        return self.best(self.dense_grid(task))

    def sweep(self, method: str) -> list[RunSpec]:
        return [self.spec(method, SWEEP_TASK, FIRST_SEED, lr, "paper") for lr in SPARSE_LRS]

    def learning_rate(self, method: str, budget: str) -> float:
        """The method's learning rate at ``budget``: fixed, the config's (no partner: nxm_paper), or its sweep's best."""
        fixed = BUDGETS[budget].fixed_lrs
        if method in fixed:
            return fixed[method]
        if method not in LR_PARTNER:
            config = method_config(method)
            return float(config["model"]["init_args"]["learning_rate"])
        return self.best(self.sweep(LR_PARTNER[method])).learning_rate

    def runs(self) -> Iterator[RunSpec | Waiting]:
        """Every run once, in running order; a :class:`Waiting` in place of a run whose inputs have not finished."""
        seen: set[str] = set()
        for item in self._all_runs():
            if isinstance(item, RunSpec):
                if item.name in seen:
                    continue  # a sweep point that is also the study's run (the first seed at the chosen rate)
                seen.add(item.name)
            yield item

    def _all_runs(self) -> Iterator[RunSpec | Waiting]:
        # Seed by seed across the tasks, so that a partial study gives the 4-task average of a whole seed early
        # (the goals are on that average), at both budgets (a seed's short runs take a tenth of its paper runs);
        # each task's dense grid (and the sweep) comes just before its first runs.
        for seed in self.seeds:
            for budget in self.budgets:
                for task in self.tasks:
                    if (budget, seed) == (self.budgets[0], self.seeds[0]):
                        yield from self.dense_grid(task)
                        if task == SWEEP_TASK and "paper" in self.budgets:
                            # asp and nxm in turn at each rate, so that the first pair compares them early.
                            yield from self._planned(
                                lambda: [spec for pair in zip(self.sweep("asp"), self.sweep("nxm")) for spec in pair]
                            )
                    for method in BUDGETS[budget].methods:
                        if seed != FIRST_SEED and method in BUDGETS[budget].first_seed_only:
                            continue
                        yield from self._planned(
                            lambda m=method, t=task, s=seed, b=budget: [self.spec(m, t, s, self.learning_rate(m, b), b)]
                        )

    @staticmethod
    def _planned(make: Any) -> Iterator[RunSpec | Waiting]:
        try:
            yield from make()
        except Waiting as waiting:
            yield waiting


def zstep_args(spec: RunSpec) -> dict[str, Any]:
    """ADMM's Z-step interval for ``spec``, shortened where the config's would give fewer than its budget's
    ``min_zsteps`` Z-steps in the phase (RTE's 78 steps an epoch); the phase ends at the config's ``end_fraction``
    or at the one ``spec``'s ADMM edits set."""
    config = method_config(spec.method)
    admm = next((c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"] == ADMM_CALLBACK), None)
    if admm is None or admm.get("update_every") is None or spec.budget is None:
        return {}
    # An exploration's edit of the phase's end (not of the interval, which this computes) counts.
    admm = {**admm, **{k: v for k, v in spec.callback_args.get(ADMM_CALLBACK, {}).items() if k != "update_every"}}
    steps = steps_per_epoch(spec) * spec.epochs * admm.get("end_fraction", 1.0)
    every, fewest = admm["update_every"], BUDGETS[spec.budget].min_zsteps
    return {} if steps // every >= fewest else {"update_every": max(1, int(steps // fewest))}


def steps_per_epoch(spec: RunSpec) -> int:
    """Optimizer steps of one training epoch of ``spec``'s task (from the training file's line count)."""
    from nxm_lightning.tasks.glue import get_task

    config = method_config(spec.method)
    task = get_task(spec.task)
    lines = (REPO / spec.data_dir / task.directory / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
    examples = sum(1 for line in lines if line.strip()) - task.has_header
    examples = min(examples, TRAIN_SUBSETS.get(spec.task, examples))
    return -(-examples // config["data"]["batch_size"])


def print_plan(study: Study) -> None:
    """A line per run of ``study``, in running order: finished (with its score), to run, or waiting (on what)."""
    for item in study.runs():
        if isinstance(item, Waiting):
            print(f"[wait] {item}")
            continue
        record = study.record(item)
        state = f"done  {record['metrics']['best_score']:6.2f}" if record else "to run"
        print(f"[{state}] {item.name}")


def task_options(work_dir: Path | None) -> argparse.ArgumentParser:
    """The options that say where the runs go and which to plan (a parent parser; ``work_dir``: the default)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--work-dir", type=Path, default=work_dir)
    options.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    options.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    options.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=list(SEEDS),
        help=f"the seeds whose sparse runs to plan (default: all); the dense grid and the sweep stay at seed {FIRST_SEED}",
    )
    return options
