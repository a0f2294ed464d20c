"""The GLUE accuracy study (issue 12): strong dense baselines, then every sparse method at equal budgets, through
``cli.py``.

Every run is ``python cli.py fit --config <copy of configs/*.yaml> <overrides>`` in a subprocess, so the study measures
exactly what users run. A finished run writes ``benchmarks/records/study/<name>.json`` (committed: the metrics read
from the run's TensorBoard events, the wall and CPU time, the exact command, the resolved config, the package
versions; for a sparse run, the share of the weights it keeps that the magnitude mask of its dense start keeps too,
measured from the exports as it finishes); a rerun skips every run with a current record, so the study resumes where
it stopped, on this machine or another, and a run killed midway (its session ended) resumes from its last epoch's
checkpoint when its work dir is still there. Runs, exports and logs go to the work dir (``benchmarks/results/study``,
not committed); a dense export that a sparse run needs and that is missing (a new machine) is rebuilt by running its
record's command again, up to the first epoch that scores the record's best.

The plan, in the order it runs (seed by seed across the tasks, so that a partial study gives whole seeds of the
4-task average that the goals are on; each seed's short budget right after its paper budget):

1. ``dense``: ``configs/glue_dense.yaml`` at each learning rate of :data:`DENSE_LRS` for up to 10 epochs, stopped
   after 3 epochs without a better dev score; the best epoch is exported. The best run of the task is the start of
   every sparse method and the teacher of the ``_kd`` ones.
2. On :data:`SWEEP_TASK` only: ``asp`` and ``nxm`` at the ``paper`` budget for each of :data:`SPARSE_LRS`; the best
   becomes the learning rate of that method (and of its ``_kd`` and ``_fisher`` partners) on every task.
3. The ``paper`` budget (10 epochs after the dense stage; ADMM's phase holds at least 20 Z-steps): ``asp``
   (``glue_asp.yaml``), ``nxm`` (``glue_nxm.yaml``), ``asp_kd`` (``glue_asp_kd.yaml``), ``nxm_kd`` (``glue_kd.yaml``)
   (each pair of the goals' differences back to back) and the ablation ``asp_fisher`` (``glue_asp_fisher.yaml``:
   asp's one-shot cut ranked by Fisher, as nxm ranks; on the first seed it scored within a point of nxm or above it,
   so it gets every seed) for every seed; for the first seed, ``nxm_paper`` (``glue_paper.yaml``, the research
   code's recipe).
4. The ``short`` budget (1 epoch after the dense stage, the previous study's): ``asp`` and ``nxm`` at the
   learning rates that study chose, for every seed.

Every seed's sparse runs start from the same dense model, so the seed spread is that of the sparse stage.

Run from the repository root (in the background: the whole study takes days on a 2-core CPU)::

    nohup python benchmarks/glue_study.py run > study.log 2>&1 &
    python benchmarks/glue_study.py plan                  # what has finished, what runs next
    python benchmarks/study_report.py                     # docs/RESULTS.md and its plots from the records

``run --workers 2`` trains two ready runs side by side, the cores shared among them (``benchmarks/bench_parallel.py``
measures whether that pays on a machine: 1.19x in bf16-mixed on the 2-core Xeon of docs/BENCHMARKS.md, 0.95x in fp32
on its AMD EPYC).
``run --precision`` (default ``auto``: ``bf16-mixed`` where bf16 is native, 0.64x the fp32 step time there, else
``32-true``) sets the precision of the runs it starts; it is not part of a run's fingerprint, so records made in
another precision stay current, and each record says its own. ``kill <driver>`` stops its runs too; they resume from
their last epoch's checkpoint, in the precision they started in, at the next ``run``. ``run --finish-within HOURS``
starts only runs expected to end by then (the median wall time of the same run at the seeds run alike, else the
longest at any seed: :func:`expected_wall_s`), for a session whose machine goes away at a known time: a run cut off
there starts again from scratch on the next machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
RECORDS = REPO / "benchmarks" / "records" / "study"
# In a dense export: the dev score of the model it holds. A rebuild on another machine trains a slightly different
# model (SST-2: 87.16 on an AMD EPYC against 86.58 recorded on a Xeon), so each sparse record says which it started from.
DENSE_BUILD = "study_build.json"
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
REBUILD_SCORE_SLACK = 1e-3  # GLUE points
SWEEP_TASK = "stsb"
SPARSE_LRS = (1e-4, 5e-5, 2e-4)  # in running order: the paper's range first
FP32 = "32-true"  # the shipped configs' precision (Lightning's default)
BF16 = "bf16-mixed"
PRECISIONS = ("auto", FP32, BF16)  # auto: bf16-mixed where the CPU or GPU has native bf16, else fp32


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
EXPORT_CALLBACKS = ("callbacks.SavePretrainedCallback", "callbacks.HardPruneCallback")
ADMM_CALLBACK = "callbacks.NxMSparsifyCallback"
EARLY_STOPPING = "lightning.pytorch.callbacks.EarlyStopping"
CURVES = (
    "admm/primal_residual", "admm/dual_residual", "admm/mask_flip_rate", "admm/rho", "admm/w_step_progress",
    "val_pruned/score", "train/loss",
)  # fmt: skip
PACKAGES = ("torch", "lightning", "transformers", "datasets", "torchmetrics", "tensorboard", "nxm-lightning")


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


# ---- reading a finished run --------------------------------------------------------------------------------------


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard event files, as ``{tag: [(step, value), ...]}`` in step order."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    resumes = read_resumes(run_dir)
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        series = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
        written_from = min((e.wall_time for values in series.values() for e in values), default=math.inf)
        # What a stopped attempt logged after the checkpoint that the next attempt resumed from is void: that one logs
        # those steps again, maybe otherwise.
        void_after = min((checkpoint for checkpoint, resumed in resumes if written_from < resumed), default=math.inf)
        for tag, values in series.items():
            scalars.setdefault(tag, []).extend((e.step, float(e.value)) for e in values if e.wall_time <= void_after)
    return {tag: sorted(values) for tag, values in scalars.items() if values}


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The study's metrics of one run from its events.

    ``best_score``: the best evaluation of the model the run exports: every ``val/score`` of a dense run; for a run
    that cuts, ``prune/score_after`` (the score right after the cut) and every ``val/score`` after it, so that a cut at
    the end of fit (the research code's recipe: no evaluation follows it) scores the cut model, not the dense one
    before it. ``best_metrics``: each GLUE metric ``val/<name>`` of that evaluation (none for the cut's own score);
    ``final_*``: the last of those evaluations; ``prune_*``: the dev score just before and after the cut
    (``prune/score_before`` / ``prune/score_after``); ``val_scores``: all ``(step, val/score)``; ``curves``: the
    series of :data:`CURVES` that the run logged (the ADMM dashboard).
    """
    scalars = read_scalars(run_dir)
    scores = scalars.get("val/score", [])
    if not scores:
        raise ValueError(f"No val/score in the TensorBoard events under {run_dir}.")
    prune = scalars.get("prune/score_after", [])
    prune_step = prune[0][0] if prune else None
    # The cut's own score first, so that it wins a tie. Lightning logs an epoch-end validation at the step before the
    # one it follows: after a cut on an epoch's last batch, that validation (of the cut model) falls before the cut's
    # step and is left out, but the cut's own score is the same model's; one logged there after a cut at an epoch end
    # (nxm_paper's) is of the dense model and must be left out.
    eligible = scores if not prune else [prune[0], *((step, v) for step, v in scores if step >= prune_step)]
    best_step, best = max(eligible, key=lambda item: item[1])
    final_step, final = scores[-1] if not prune or scores[-1][0] >= prune_step else prune[0]
    metric_tags = [t for t in scalars if t.startswith("val/") and t not in ("val/score", "val/loss")]

    def at(step: int) -> dict[str, float]:
        return {t.removeprefix("val/"): v for t in metric_tags for s, v in scalars[t] if s == step}

    return {
        "best_score": best,
        "best_step": best_step,
        "best_metrics": at(best_step),
        "final_score": final,
        "final_step": final_step,
        "final_metrics": at(final_step),
        "prune_step": prune_step,
        "prune_score_before": scalars["prune/score_before"][0][1] if "prune/score_before" in scalars else None,
        "prune_score_after": prune[0][1] if prune else None,
        "val_scores": scores,
        "evaluations": len(scores),
        "curves": {tag: scalars[tag] for tag in CURVES if tag in scalars},
    }


def environment() -> dict[str, Any]:
    """Package versions, Python, the machine (:func:`machine`) and the repository's commit (and whether the tree was
    modified)."""

    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    return {
        "packages": versions,
        "python": platform.python_version(),
        **machine(),
        "accelerator": _accelerator(),
        "git_commit": commit,
        "git_dirty": bool(dirty.stdout.strip()),
    }


def machine() -> dict[str, Any]:
    """The machine, and whether its CPU has native bf16 (the CPU's name does not tell the two kinds of AMD EPYC apart,
    one with it and one without; their dense builds and step times differ)."""
    from nxm_lightning.sparsity.precision import has_fast_bf16_cpu

    return {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_name()}", "cpu_native_bf16": has_fast_bf16_cpu()}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _accelerator() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically (a half-written record would mark a run finished)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def kept_share(sparse_dir: Path, dense_dir: Path) -> float:
    """The share of the weights kept in the export ``sparse_dir`` that the magnitude N:M mask of ``dense_dir`` (what
    asp keeps) keeps too, over every layer its ``sparsity.json`` lists: how far a method's mask is from magnitude's
    (two 2:4 masks drawn at random agree on half the kept weights)."""
    import torch

    from nxm_lightning.sparsity.export import MANIFEST, as_out_in
    from nxm_lightning.sparsity.nxm import NxMPattern, nxm_mask
    from nxm_lightning.sparsity.verify import load_weights

    layers = json.loads((sparse_dir / MANIFEST).read_text())["layers"]
    sparse, dense = load_weights(sparse_dir), load_weights(dense_dir)
    both = kept = 0
    for name, layer in layers.items():
        pattern, layout = NxMPattern.parse(layer["pattern"]), layer.get("layout", "out_in")  # as verify reads them
        kept_here = as_out_in(sparse[name], layout) != 0
        magnitude = nxm_mask(as_out_in(dense[name], layout).float().abs(), pattern.n, pattern.m)
        both += int(torch.count_nonzero(kept_here & magnitude))
        kept += int(torch.count_nonzero(kept_here))
    return both / kept


def make_record(spec: RunSpec, command: list[str], wall_s: float, cpu_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of a finished run: metrics from its events, its resolved config, command and environment."""
    return {
        "name": spec.name,
        "method": spec.method,
        **({"variant": spec.variant} if spec.variant else {}),
        "budget": spec.budget,
        "task": spec.task,
        "seed": spec.seed,
        "learning_rate": spec.learning_rate,
        "precision": spec.precision,
        "metrics": run_metrics(spec.run_dir),
        "epochs": spec.epochs,
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        **run_facts(spec.run_dir, command),
        **extra,
        "environment": environment(),
    }


def run_facts(run_dir: Path, command: list[str]) -> dict[str, Any]:
    """What every record says of how a finished ``cli.py`` run was made: its command (without the interpreter's path),
    the config LightningCLI resolved (``config.yaml`` in the run dir) and when it finished."""
    saved = run_dir / "config.yaml"
    return {
        "command": shlex.join(["python", *command[1:]]),
        "resolved_config": yaml.safe_load(saved.read_text()) if saved.exists() else None,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ---- running ------------------------------------------------------------------------------------------------------


# The lock's descriptor, inherited by every training child: a second driver is refused while any run of this one still
# trains, even one orphaned by a killed driver (flock holds until the last descriptor of the open file closes).
_lock_fds: tuple[int, ...] = ()
# The training children alive now, to stop on the driver's exit; and whether the driver is stopping (a run it stops
# then is resumable, not failed).
_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()
# How a run ends when it is stopped rather than failed: killed by a signal, or cli.py's exit after Lightning's graceful
# stop on SIGTERM (128 + 15; Lightning alone would exit 0, as if the fit had finished).
STOPPED = (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM)


@contextlib.contextmanager
def study_lock(work_dir: Path) -> Iterator[None]:
    """Hold ``<work>/study.lock`` (and pass it to every training child) so that a second study process cannot train
    in the same work dir at the same time."""
    global _lock_fds
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / "study.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"Another study process (or a run it left training) holds {work_dir / 'study.lock'}; one study per work "
                "dir at a time."
            ) from None
        _lock_fds = (handle.fileno(),)
        try:
            yield
        finally:
            _lock_fds = ()


def stop_children() -> None:
    """Stop the training children (SIGTERM; the worker threads waiting on them return): their runs resume from their
    last checkpoint next time."""
    _stopping.set()
    with _children_lock:
        children = list(_children)
    for child in children:
        child.terminate()


def current_record(spec: RunSpec) -> dict[str, Any] | None:
    """The record of ``spec`` if it exists and was made by the config and command that would run now.

    A record whose config or command differs (a default changed in configs/) is stale: it moves to ``stale/``.
    """
    if not spec.record_path.exists():
        return None
    record = json.loads(spec.record_path.read_text())
    if record.get("run_fingerprint") == run_fingerprint(spec):
        return record
    stale = spec.record_path.parent / "stale" / spec.record_path.name
    stale.parent.mkdir(exist_ok=True)
    spec.record_path.replace(stale)
    print(f"[stale] {spec.name}: its config or command changed since it ran; moved to {stale}", flush=True)
    return None


def run_command(command: list[str], log: IO[str], threads: int | None) -> tuple[int, float]:
    """Run ``command`` to its end, output to ``log``: its exit status and CPU seconds (its own, whatever else runs).

    ``threads``: torch's intra-op threads in the child (``OMP_NUM_THREADS``); None: torch's default (every core).
    """
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with _children_lock:
        if _stopping.is_set():
            return -signal.SIGTERM, 0.0
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=_lock_fds)
        _children.add(process)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        with _children_lock:
            _children.discard(process)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def train(
    spec: RunSpec, threads: int | None = None, fresh: bool = False
) -> tuple[list[str], float, float, dict[str, dict[str, Any]]] | None:
    """Run ``spec``; ``(command, wall s, CPU s, callback edits)``, or None when it failed.

    A run stopped midway (its session ended, or the driver was stopped) resumes from its ``last.ckpt``, written at
    every epoch end, when its config and command are unchanged (``<run dir>/fingerprint``); a run whose fit finished
    but whose record was not written is not trained again (``fit_done.json``). Anything else, a failed run included,
    starts from scratch, as does every run when ``fresh`` (and one stopped before its first checkpoint: that attempt's
    time is not counted). Wall and CPU seconds are the sums over the attempts that the driver saw end
    (``attempts.json``; an attempt killed with its driver is missing, and a stopped attempt's work after its last
    checkpoint, redone by the next, counts); ``resumes.json`` lists when each resumed attempt started.
    """
    fingerprint = run_fingerprint(spec)
    last, marker, done = (spec.run_dir / name for name in ("checkpoints/last.ckpt", "fingerprint", "fit_done.json"))
    resumable = not fresh and marker.exists() and marker.read_text() == fingerprint
    resume = resumable and last.exists()
    started_in = spec.run_dir / "precision"
    if resumable and (resume or done.exists()):
        # A run resumes (or is recorded) in the precision it started in (fp32 for a run dir from before the study chose
        # precisions).
        spec.precision = started_in.read_text() if started_in.exists() else FP32
        warn_if_emulated(spec)
    command = spec.command()
    edits = spec.write_config()
    if resumable and done.exists():
        finished = json.loads(done.read_text())
        return command, finished["wall_s"], finished["cpu_s"], edits
    if resume:
        resumes = [*read_resumes(spec.run_dir), (last.stat().st_mtime, time.time())]
        (spec.run_dir / "resumes.json").write_text(json.dumps(resumes))
        print(f"[resume] {spec.name}: from {last}", flush=True)
    else:
        if spec.run_dir.exists():
            shutil.rmtree(spec.run_dir)
        spec.run_dir.mkdir(parents=True)
        marker.write_text(fingerprint)
        started_in.write_text(spec.precision)
    attempt = command + (["--ckpt_path", str(last)] if resume else [])
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[run ] {spec.name}: {shlex.join(attempt)}", flush=True)
    start = time.monotonic()
    with open(spec.log_path, "a" if resume else "w") as log:
        log.write(shlex.join(attempt) + "\n\n")
        log.flush()
        status, cpu = run_command(attempt, log, threads)
    wall = time.monotonic() - start
    spent = [*read_attempts(spec.run_dir), [wall, cpu]]
    (spec.run_dir / "attempts.json").write_text(json.dumps(spent))
    if _stopping.is_set() or status in STOPPED:
        print(f"[stopped] {spec.name}: exit status {status} after {wall:.0f} s; it resumes at the next run", flush=True)
        return None
    if status != 0:
        marker.unlink(missing_ok=True)  # failed, not stopped: the next attempt starts from scratch (code fixed)
        print(f"[FAIL] {spec.name}: exit status {status} after {wall:.0f} s; see {spec.log_path}", flush=True)
        return None
    total_wall, total_cpu = (sum(column) for column in zip(*spent))
    done.write_text(json.dumps({"wall_s": total_wall, "cpu_s": total_cpu}))
    return command, total_wall, total_cpu, edits


def read_attempts(run_dir: Path) -> list[list[float]]:
    """The wall and CPU seconds of each attempt of the run that the driver saw end."""
    path = run_dir / "attempts.json"
    return json.loads(path.read_text()) if path.exists() else []


def read_resumes(run_dir: Path) -> list[tuple[float, float]]:
    """For each resume of the run: when the checkpoint it resumed from was written, and when it started (epoch s)."""
    path = run_dir / "resumes.json"
    return [tuple(pair) for pair in json.loads(path.read_text())] if path.exists() else []


def execute(spec: RunSpec, keep_checkpoints: bool = False, threads: int | None = None) -> dict[str, Any] | None:
    """Run ``spec`` unless it has a current record; write and return the record, or None when the run failed."""
    record = current_record(spec)
    if record is not None:
        return record
    result = train(spec, threads)
    if result is None:
        return None
    command, wall, cpu, edits = result
    # The fingerprint the run was trained under (its marker), not that of the configs now: a config edited while it
    # trained must leave its record stale.
    trained_under = (spec.run_dir / "fingerprint").read_text()
    # What the wall and CPU time sum over (none listed: a run dir of older code, which counted only the last attempt).
    attempts = len(read_attempts(spec.run_dir)) or None
    extra = {"callback_edits": edits, "run_fingerprint": trained_under, "threads": threads or torch_threads(),
             "resumed": len(read_resumes(spec.run_dir)), "attempts": attempts}  # fmt: skip
    if spec.budget is not None:
        dense_export = Path(spec.model or spec.teacher)
        extra["dense_start_score"] = dense_start_score(dense_export, spec.records_dir)
        # Measured now, while the run's export and its dense start are both on this machine.
        extra["kept_share_of_magnitude_mask"] = kept_share(spec.export_dir, dense_export)
    record = make_record(spec, command, wall, cpu, extra)
    write_record(spec.record_path, record)
    if spec.budget is None and spec.export_dir.exists():
        note_dense_build(spec.export_dir, record["metrics"]["best_score"])
    (spec.run_dir / "fit_done.json").unlink()  # the record stands for it now
    if not keep_checkpoints:
        shutil.rmtree(spec.run_dir / "checkpoints", ignore_errors=True)
    print(f"[done] {spec.name}: best {record['metrics']['best_score']:.2f}, {wall / 60:.1f} min", flush=True)
    return record


def note_dense_build(export_dir: Path, best_score: float) -> None:
    """Write into a dense export the dev score of the model it holds (:data:`DENSE_BUILD`)."""
    build = {"best_score": best_score, **machine()}
    (export_dir / DENSE_BUILD).write_text(json.dumps(build))


def dense_start_score(export_dir: Path, records_dir: Path) -> float:
    """The dev score of the dense export ``export_dir`` that a sparse run starts from: its build's (:data:`DENSE_BUILD`),
    else (an export of older code: the original run's) its record's."""
    build = export_dir / DENSE_BUILD
    if build.exists():
        return json.loads(build.read_text())["best_score"]
    return json.loads((records_dir / f"{export_dir.name}.json").read_text())["metrics"]["best_score"]


def rebuild_export(spec: RunSpec, threads: int | None = None) -> bool:
    """Run a recorded dense run again for its export (missing on a new machine), stopping at the first epoch that
    scores the record's best on dev; note the rebuild in its record.

    Stopping there saves the epochs that only confirmed the best (the grid's patience: 3 of 7-10 epochs); a rebuild
    that never gets there runs the recorded course and exports its own best.
    """
    record = json.loads(spec.record_path.read_text())
    # Above the record's best less a hair: a score equal to it (RTE's accuracy moves in steps of 1/277) counts.
    threshold = record["metrics"]["best_score"] - REBUILD_SCORE_SLACK
    spec = replace(
        spec,
        precision=record.get("precision", FP32),  # what the record was made in
        callback_args={**spec.callback_args, EARLY_STOPPING: {"stopping_threshold": threshold}},
    )
    warn_if_emulated(spec)
    print(f"[rebuild] {spec.name}: its export is missing; running its recorded command again, up to the recorded "
          f"best score", flush=True)  # fmt: skip
    result = train(spec, threads, fresh=True)
    if result is None or not spec.export_dir.exists():
        return False
    metrics = run_metrics(spec.run_dir)
    rebuilt = metrics["best_score"]
    record.setdefault("rebuilds", []).append(
        {"best_score": rebuilt, "best_step": metrics["best_step"], "evaluations": metrics["evaluations"],
         "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **machine()}
    )  # fmt: skip
    write_record(spec.record_path, record)
    note_dense_build(spec.export_dir, rebuilt)
    print(f"[rebuilt] {spec.name}: best {rebuilt:.2f} (recorded {record['metrics']['best_score']:.2f})", flush=True)
    return True


def run_fingerprint(spec: RunSpec) -> str:
    """A hash of the run's YAML and its command line, to tell a stale record; without the interpreter's path, the work
    dir and the data dir, so that the records stay current on another machine."""
    text = spec.edited_config()[0] + "\0".join(spec.command(with_precision=False)[1:])
    text = text.replace(str(spec.work_dir), "<work>").replace(spec.data_dir, "<glue>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- the plan -----------------------------------------------------------------------------------------------------


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


def torch_threads() -> int:
    """The intra-op threads torch takes in a child by default: ``OMP_NUM_THREADS``, else every core it may use."""
    with contextlib.suppress(ValueError):
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    return len(os.sched_getaffinity(0))


def guarded(job: Callable[..., Any], spec: RunSpec, *args: Any) -> Any:
    """``job(spec, *args)`` (:func:`execute` or :func:`rebuild_export`), with an error (a run's unreadable events, say)
    reported at once as the run's failure: None."""
    try:
        return job(spec, *args)
    except Exception:
        traceback.print_exc()
        print(f"[FAIL] {spec.name}: the error above", flush=True)
        return None


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def resolve_precision(choice: str) -> str:
    """``--precision``: ``auto`` becomes what this machine trains fastest in with fp32 weights (bf16-mixed where the
    GPU or the CPU has native bf16: 0.64x the fp32 time of a MiniLM step on an AVX-512 BF16 CPU, docs/BENCHMARKS.md;
    emulated bf16 took 18.9x the fp32 time on an AVX2-only CPU)."""
    if choice != "auto":
        return choice
    import torch

    from nxm_lightning.sparsity.precision import has_fast_bf16_cpu, recommended_precision

    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    precision, _ = recommended_precision(capability, has_fast_bf16_cpu())
    return precision if precision == BF16 else FP32  # 16-mixed (an old GPU) is not one of the study's


def warn_if_emulated(spec: RunSpec) -> None:
    """Say so when a run must train in bf16 (resumed, or rebuilt for its export) on a machine without native bf16."""
    if spec.precision == BF16 and resolve_precision("auto") != BF16:
        print(f"[warn] {spec.name}: it started (or was recorded) in bf16-mixed, which this machine emulates (18.9x the "
              "fp32 time on an AVX2-only CPU, docs/BENCHMARKS.md); it keeps that precision", flush=True)  # fmt: skip


def cmd_run(args: argparse.Namespace) -> None:
    drive(Study(args.work_dir, args.data_dir, tuple(args.tasks), tuple(args.seeds), tuple(args.budgets),
                precision=resolve_precision(args.precision)), args)  # fmt: skip


def drive(study: Study, args: argparse.Namespace) -> None:
    """Run ``study`` (:func:`run_study`) as the ``run`` options of :func:`run_options` say, holding the work dir's
    lock; stopped by SIGTERM, it stops its runs too."""
    print(f"[start] new runs train in precision {study.precision} (resumed and rebuilt runs keep their own)", flush=True)
    # Side by side, each run gets its share of the cores (two 1-thread runs: 1.19x the throughput of one 2-thread
    # run in bf16-mixed on the 2-core Xeon of docs/BENCHMARKS.md, 0.95x in fp32 on its AMD EPYC).
    threads = max(1, torch_threads() // args.workers) if args.workers > 1 else None
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # `kill <driver>` stops its runs too (resumable next time)
    try:
        with study_lock(study.work_dir), ThreadPoolExecutor(args.workers) as pool:
            try:
                deadline = None if args.finish_within is None else time.monotonic() + 3600 * args.finish_within
                run_study(study, pool, args.workers, args.keep_checkpoints, threads, deadline)
            finally:
                stop_children()
    finally:
        _stopping.clear()  # the runs have ended: a later failure in this process is a failure again


def expected_wall_s(spec: RunSpec, threads: int | None = None) -> float | None:
    """How long ``spec`` is expected to take: the median wall time recorded for it at the seeds run alike (this
    machine, ``spec``'s precision, ``threads`` per run), else the longest at any seed (for a dense run rebuilt, its
    own record's); for a run no seed of which has finished (``nxm_paper`` runs one), 1.5x the longest run of its task
    and budget; None while none of those has finished either.

    The median of the alike: one seed's run on a machine busy with other work (SST-2's seed 42 took twice as long as
    seeds 43 and 44 on the same machine) would otherwise hold back every run that fits; another machine's times say
    little (the fp32 and bf16 steps differ 1.5x), so only the longest of those is safe.
    """
    paths = (replace(spec, seed=seed).record_path for seed in sorted({spec.seed, *SEEDS}))
    own = [json.loads(path.read_text()) for path in paths if path.exists()]
    here = machine()

    def run_alike(record: dict[str, Any]) -> bool:
        made_on = record.get("environment", {})
        return (
            record.get("precision", FP32) == spec.precision
            and record.get("threads") == (threads or torch_threads())
            and made_on.get("machine") == here["machine"]
            # A record from before the flag matches on precision alone (bf16-mixed was chosen only where it is native).
            and made_on.get("cpu_native_bf16", here["cpu_native_bf16"]) == here["cpu_native_bf16"]
        )

    alike = [record["wall_s"] for record in own if run_alike(record)]
    if alike:
        return statistics.median(alike)
    if own:
        return max(record["wall_s"] for record in own)
    alike = (json.loads(path.read_text()) for path in spec.records_dir.glob(f"*_{spec.task}_s*.json"))
    return max((1.5 * record["wall_s"] for record in alike if record.get("budget") == spec.budget), default=None)


def run_study(
    study: Study,
    pool: ThreadPoolExecutor,
    workers: int,
    keep_checkpoints: bool,
    threads: int | None,
    deadline: float | None = None,
) -> None:
    """Keep ``workers`` ready runs training until nothing is left or a run failed (then let the others finish).

    A missing dense export (a new machine) is rebuilt by one worker while the others take runs that do not need it.
    ``deadline`` (a ``time.monotonic()`` value): start only what is expected to end before it (:func:`expected_wall_s`;
    a rebuild together with the run that needs it), so that a session that ends then loses no work in flight.
    """
    running: dict[Future[Any], tuple[RunSpec, bool]] = {}  # the run, and whether it is a rebuild
    unbuildable: set[str] = set()  # dense runs whose rebuild failed: their sparse runs wait
    too_long: set[str] = set()  # runs left out: not expected to end before the deadline
    failed = False

    def fits(*specs: RunSpec) -> bool:
        expected = [expected_wall_s(spec, threads) for spec in specs] if deadline is not None else []
        if None in expected or (expected and time.monotonic() + sum(expected) > deadline):
            too_long.add(specs[-1].name)
            return False
        return True

    while True:
        for item in [] if failed else study.runs():
            if len(running) >= workers:
                break
            busy = {spec.name for spec, _ in running.values()}
            if isinstance(item, Waiting) or item.name in busy or current_record(item):
                continue
            if item.budget is not None:
                dense = study.best_dense(item.task)
                if not dense.export_dir.exists():
                    if dense.name not in busy | unbuildable and fits(dense, item):
                        running[pool.submit(guarded, rebuild_export, dense, threads)] = (dense, True)
                    continue
            if fits(item):
                too_long.discard(item.name)
                running[pool.submit(guarded, execute, item, keep_checkpoints, threads)] = (item, False)
        if not running:
            if failed:
                print("[stop] a run failed; fix it and start the study again (finished runs are kept)", flush=True)
            elif too_long:
                print(f"[end ] {len(too_long)} runs left are not expected to end within --finish-within (or no run "
                      "like them has finished to tell how long they take); run again without it", flush=True)  # fmt: skip
            else:
                print("[end ] nothing left to run (see `plan` for runs waiting on failed ones)", flush=True)
            return
        # Plan again when one ends: it may decide the next runs (the best dense model, a swept learning rate).
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            spec, rebuild = running.pop(future)
            if rebuild and not future.result():
                unbuildable.add(spec.name)
                print(f"[wait] the runs of {spec.task} wait: the dense export {spec.export_dir} could not be rebuilt", flush=True)
            elif not rebuild:
                failed = failed or future.result() is None


def cmd_plan(args: argparse.Namespace) -> None:
    print_plan(Study(args.work_dir, args.data_dir, tuple(args.tasks), tuple(args.seeds), tuple(args.budgets)))


def print_plan(study: Study) -> None:
    """A line per run of ``study``, in running order: finished (with its score), to run, or waiting (on what)."""
    for item in study.runs():
        if isinstance(item, Waiting):
            print(f"[wait] {item}")
            continue
        record = study.record(item)
        state = f"done  {record['metrics']['best_score']:6.2f}" if record else "to run"
        print(f"[{state}] {item.name}")


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def positive_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not hours > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours > 0 (e.g. 2.5)")
    return hours


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


def run_options() -> argparse.ArgumentParser:
    """The options of :func:`drive` (a parent parser)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--keep-checkpoints", action="store_true", help="keep each run's .ckpt files (270 MB each)")
    options.add_argument(
        "--workers", type=positive_int, default=1, help="runs side by side, the cores shared among them (default 1)"
    )
    options.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="of the runs started now (default auto: bf16-mixed where bf16 is native, else 32-true)",
    )
    options.add_argument(
        "--finish-within",
        type=positive_hours,
        metavar="HOURS",
        help="start only runs expected to end within HOURS (by the wall time of the same run at other seeds: the "
        "median of those run alike on this machine, else the longest), so that nothing is in flight when a session "
        "on this machine ends",
    )
    return options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = task_options(REPO / "benchmarks" / "results" / "study")
    common.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    run = sub.add_parser("run", parents=[common, run_options()], help="run what has no record yet: ready runs side by side")
    run.set_defaults(func=cmd_run)
    sub.add_parser("plan", parents=[common], help="list the runs: finished (with score), to run, waiting").set_defaults(
        func=cmd_plan
    )
    args = parser.parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    args.func(args)


if __name__ == "__main__":
    main()
