"""The GLUE accuracy study (issue 6): dense, ASP, NxM, NxM+KD and one-stage NxM on MiniLM-L6, through ``cli.py``.

Every run is ``python cli.py fit --config <copy of configs/*.yaml> <overrides>`` in a subprocess, so the study measures
exactly what users run. A finished run writes ``<work>/records/<method>_<task>_s<seed>.json`` (the metrics read from
the run's TensorBoard events, epochs, wall time, the exact command, the resolved config and package versions); a rerun
skips runs that have a record, so an interrupted study resumes where it stopped. Each run logs to
``<work>/logs/<method>_<task>_s<seed>.log``. Only one study process trains at a time (a lock file in the work dir).

Methods, all at the same budget after the dense stage:

- ``dense``: ``configs/glue_dense.yaml`` (exported with SavePretrainedCallback: the start of asp/nxm, the teacher of
  nxm_kd);
- ``asp``: ``configs/glue_asp.yaml`` from the dense export (magnitude 2:4 once, masked fine-tuning);
- ``nxm``: ``configs/glue.yaml`` from the dense export (ADMM, hard prune, masked fine-tuning: the paper's pipeline);
- ``nxm_kd``: ``configs/glue_kd.yaml`` with the dense export as teacher;
- ``nxm_onestage``: ``configs/glue.yaml`` from the pretrained MiniLM, for dense + sparse epochs (no dense stage).

Run from the repository root::

    python benchmarks/glue_study.py run --profile quick --work-dir /tmp/study --data-dir ../shared/data/glue
    python benchmarks/glue_study.py run --profile full --work-dir /tmp/study_full          # GPU: all data, 3 seeds
    python benchmarks/glue_study.py tune --task stsb --work-dir /tmp/study                 # ADMM-phase sweep
    python benchmarks/study_report.py --records /tmp/study/records                         # docs/RESULTS.md + plots

``import`` turns a finished ``cli.py fit`` run made by hand into a record (e.g. a dense run started before the study).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
METHODS = ("dense", "asp", "nxm", "nxm_kd", "nxm_onestage")
TASKS = ("stsb", "rte", "cola", "sst2")
METHOD_CONFIGS = {
    "dense": "glue_dense.yaml",
    "asp": "glue_asp.yaml",
    "nxm": "glue.yaml",
    "nxm_kd": "glue_kd.yaml",
    "nxm_onestage": "glue.yaml",
}
EXPORT_CALLBACKS = ("callbacks.SavePretrainedCallback", "callbacks.HardPruneCallback")
ADMM_CALLBACK = "callbacks.NxMSparsifyCallback"
# Sweep keys that go to the LightningModule; every other key goes to NxMSparsifyCallback.
MODEL_ARGS = ("learning_rate", "warmup_ratio", "alpha", "temperature")
CURVES = ("admm/primal_residual", "admm/dual_residual", "admm/mask_flip_rate", "admm/rho", "val_pruned/score", "train/loss")
PACKAGES = ("torch", "lightning", "transformers", "datasets", "torchmetrics", "tensorboard", "nxm-lightning")


@dataclass(frozen=True)
class Profile:
    """A study size: the seeds, the epochs of each stage and the per-task training subsample.

    ``sparse_epochs`` is the budget of every method after the dense stage (asp, nxm, nxm_kd); nxm_onestage gets
    ``dense_epochs + sparse_epochs`` from the pretrained weights. ``max_train_samples`` keeps the first examples.
    ``dense_seeds``: the seeds that get their own dense run (and nxm_onestage); the other seeds start asp, nxm and
    nxm_kd from the first dense seed's export, so their spread is that of the sparse stage alone. None: every seed.
    """

    seeds: tuple[int, ...]
    dense_epochs: int
    sparse_epochs: int
    dense_seeds: tuple[int, ...] | None = None
    max_seq_length: int = 128
    max_train_samples: dict[str, int] = field(default_factory=dict)

    def dense_seed(self, seed: int) -> int:
        """The seed whose dense run (and export) the sparse methods of ``seed`` start from."""
        return seed if self.dense_seeds is None or seed in self.dense_seeds else self.dense_seeds[0]

    def epochs(self, method: str) -> int:
        if method == "dense":
            return self.dense_epochs
        return self.dense_epochs + self.sparse_epochs if method == "nxm_onestage" else self.sparse_epochs


PROFILES = {
    # A 2-core CPU: one dense run per task, three seeds of the 1-epoch sparse stage, SST-2 training cut to 8000 examples.
    "quick": Profile(seeds=(42, 43, 44), dense_epochs=3, sparse_epochs=1, dense_seeds=(42,), max_train_samples={"sst2": 8000}),
    # A GPU: all data, three seeds, the configs' 3 epochs for every stage.
    "full": Profile(seeds=(42, 43, 44), dense_epochs=3, sparse_epochs=3),
}

# The ADMM-phase sweep of ``tune`` (one value changed at a time from configs/glue.yaml, plus the listed pairs).
TUNE_GRID: dict[str, list[Any]] = {
    "rho": [0.003, 0.01, 0.03, 0.1],
    "penalty": ["gradient", "decoupled"],
    "update_every": [20, 50, None],
    "end_fraction": [0.3, 0.5, 0.7],
    "learning_rate": [5e-5, 1e-4, 2e-4],
}


@dataclass
class RunSpec:
    """One ``cli.py fit`` run of the study: what to run and where its outputs go."""

    method: str
    task: str
    seed: int
    epochs: int
    work_dir: Path
    data_dir: str
    max_seq_length: int
    max_train_samples: int | None = None
    model: str | None = None
    teacher: str | None = None
    callback_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    tag: str = ""

    @property
    def name(self) -> str:
        return f"{self.method}{self.tag}_{self.task}_s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.work_dir / "runs" / f"{self.method}{self.tag}" / f"{self.task}_s{self.seed}"

    @property
    def export_dir(self) -> Path:
        return self.work_dir / "exports" / self.name

    @property
    def record_path(self) -> Path:
        return self.work_dir / "records" / f"{self.name}.json"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "logs" / f"{self.name}.log"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "configs" / f"{self.name}.yaml"

    def edited_config(self) -> tuple[str, dict[str, dict[str, Any]]]:
        """The method's YAML with the callback edits (list items cannot be overridden from the command line), and the
        edits made, keyed by callback class path."""
        config = yaml.safe_load((CONFIGS / METHOD_CONFIGS[self.method]).read_text())
        edits: dict[str, dict[str, Any]] = {}
        for callback in config["trainer"].get("callbacks") or []:
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

    def command(self) -> list[str]:
        """The ``cli.py fit`` command: the edited YAML first, then the overrides (which take precedence)."""
        args = [
            sys.executable, "cli.py", "fit", "--config", str(self.config_path),
            "--seed_everything", str(self.seed),
            "--data.task_name", self.task,
            "--data.data_dir", self.data_dir,
            "--data.max_seq_length", str(self.max_seq_length),
            "--trainer.max_epochs", str(self.epochs),
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(self.work_dir / "runs"),
            "--trainer.logger.init_args.name", f"{self.method}{self.tag}",
            "--trainer.logger.init_args.version", f"{self.task}_s{self.seed}",
        ]  # fmt: skip
        if self.max_train_samples:
            args += ["--data.max_train_samples", str(self.max_train_samples)]
        if self.model:
            args += ["--model.init_args.model_name_or_path", self.model]
        if self.teacher:
            args += ["--model.init_args.teacher", self.teacher]
        for key, value in self.model_args.items():
            args += [f"--model.init_args.{key}", str(value)]
        return args


# ---- reading a finished run --------------------------------------------------------------------------------------


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard event files, as ``{tag: [(step, value), ...]}`` in step order."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, float(e.value)) for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in scalars.items()}


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The study's metrics of one run from its events.

    ``best_score``: the best ``val/score`` after the hard prune (after step 0 for a dense run), with each GLUE metric
    ``val/<name>`` of that evaluation in ``best_metrics``; ``final_*``: the last evaluation; ``prune_*``: the dev
    score just before and after the cut (``prune/score_before`` / ``prune/score_after``); ``val_scores``: all
    ``(step, val/score)``; ``curves``: the series of :data:`CURVES` that the run logged (the ADMM dashboard).
    """
    scalars = read_scalars(run_dir)
    scores = scalars.get("val/score", [])
    if not scores:
        raise ValueError(f"No val/score in the TensorBoard events under {run_dir}.")
    prune = scalars.get("prune/score_after", [])
    prune_step = prune[0][0] if prune else None
    eligible = [(step, v) for step, v in scores if prune_step is None or step >= prune_step] or scores
    best_step, best = max(eligible, key=lambda item: item[1])
    final_step, final = scores[-1]
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
    """Package versions, Python, the machine and the repository's commit (and whether the tree was modified)."""
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    return {
        "packages": versions,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_name()}",
        "accelerator": _accelerator(),
        "git_commit": commit,
        "git_dirty": bool(dirty.stdout.strip()),
    }


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


def make_record(
    *, method: str, task: str, seed: int, run_dir: Path, command: list[str], wall_s: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """The JSON record of a finished run: metrics from its events, its resolved config, command and environment."""
    saved = run_dir / "config.yaml"
    config = yaml.safe_load(saved.read_text()) if saved.exists() else None
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "metrics": run_metrics(run_dir),
        "epochs": (config or {}).get("trainer", {}).get("max_epochs"),
        "wall_s": round(wall_s, 1),
        "command": shlex.join(["python", *command[1:]] if command[0] == sys.executable else command),
        "run_dir": str(run_dir),
        "resolved_config": config,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
        "environment": environment(),
    }


# ---- running ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def study_lock(work_dir: Path) -> Iterator[None]:
    """Hold ``<work>/study.lock`` so that a second study process cannot train at the same time."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / "study.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"Another study process holds {work_dir / 'study.lock'}; one training run at a time.") from None
        yield


def execute(spec: RunSpec, keep_checkpoints: bool, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run ``spec`` unless a record of the same run exists; write and return the record, or None when the run failed.

    A record whose config or command differs from what would run now (a default changed in configs/) is stale: it
    moves to ``records/stale/`` and the run starts again.
    """
    command = spec.command()
    fingerprint = run_fingerprint(spec.edited_config()[0], command)
    if spec.record_path.exists():
        old = json.loads(spec.record_path.read_text())
        if old.get("run_fingerprint") in (None, fingerprint):  # None: a record from before fingerprints
            print(f"[skip] {spec.name}: {spec.record_path} exists", flush=True)
            return old
        stale = spec.record_path.parent / "stale" / spec.record_path.name
        stale.parent.mkdir(exist_ok=True)
        spec.record_path.replace(stale)
        print(f"[stale] {spec.name}: its config or command changed since {stale} was written; running it again", flush=True)
    if spec.run_dir.exists():
        shutil.rmtree(spec.run_dir)  # an interrupted attempt: start it again from scratch
    edits = spec.write_config()
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[run ] {spec.name}: {shlex.join(command)}", flush=True)
    start = time.monotonic()
    with open(spec.log_path, "w") as log:
        log.write(shlex.join(command) + "\n\n")
        log.flush()
        status = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - start
    if status != 0:
        print(f"[FAIL] {spec.name}: exit status {status} after {wall:.0f} s; see {spec.log_path}", flush=True)
        return None
    record = make_record(
        method=spec.method, task=spec.task, seed=spec.seed, run_dir=spec.run_dir, command=command, wall_s=wall,
        extra={"export_dir": str(spec.export_dir), "config_file": str(spec.config_path), "callback_edits": edits,
               "log": str(spec.log_path), "tag": spec.tag, "run_fingerprint": fingerprint, **(extra or {})},
    )  # fmt: skip
    write_record(spec.record_path, record)
    if not keep_checkpoints:
        shutil.rmtree(spec.run_dir / "checkpoints", ignore_errors=True)
    print(f"[done] {spec.name}: best {record['metrics']['best_score']:.2f}, {wall / 60:.1f} min", flush=True)
    return record


def run_fingerprint(config_text: str, command: list[str]) -> str:
    """A hash of the run's YAML and its command line (without the interpreter's path), to tell a stale record."""
    digest = hashlib.sha256(config_text.encode())
    digest.update("\0".join(command[1:]).encode())
    return digest.hexdigest()[:16]


def dense_export(work_dir: Path, task: str, seed: int) -> str | None:
    """The dense run's export folder from its record, or None when the dense run has not finished."""
    path = work_dir / "records" / f"dense_{task}_s{seed}.json"
    if not path.exists():
        return None
    export = json.loads(path.read_text()).get("export_dir")
    return export if export and Path(export).exists() else None


def make_spec(method: str, task: str, seed: int, profile: Profile, args: argparse.Namespace) -> RunSpec | None:
    """The run of ``method``; None (with a message) when its inputs are missing (no dense export, no config)."""
    if not (CONFIGS / METHOD_CONFIGS[method]).exists():
        print(f"[wait] {method}_{task}_s{seed}: configs/{METHOD_CONFIGS[method]} does not exist yet", flush=True)
        return None
    spec = RunSpec(
        method=method, task=task, seed=seed, epochs=profile.epochs(method), work_dir=args.work_dir,
        data_dir=args.data_dir, max_seq_length=profile.max_seq_length,
        max_train_samples=profile.max_train_samples.get(task),
    )  # fmt: skip
    if method in ("asp", "nxm", "nxm_kd"):
        dense_seed = profile.dense_seed(seed)
        export = dense_export(args.work_dir, task, dense_seed)
        if export is None:
            print(f"[wait] {spec.name}: needs the dense export of {task} seed {dense_seed}", flush=True)
            return None
        if method == "nxm_kd":
            spec.teacher = export
        else:
            spec.model = export
    return spec


def cmd_run(args: argparse.Namespace) -> None:
    profile = PROFILES[args.profile]
    seeds = args.seeds or profile.seeds
    with study_lock(args.work_dir):
        for seed, task, method in itertools.product(seeds, args.tasks, args.methods):
            if method in ("dense", "nxm_onestage") and profile.dense_seed(seed) != seed:
                continue  # the profile runs the dense stage (and the one-stage method) for dense_seeds only
            spec = make_spec(method, task, seed, profile, args)
            if spec is not None:
                execute(spec, args.keep_checkpoints, {"profile": args.profile})


def tune_variants() -> list[tuple[str, dict[str, Any]]]:
    """``(tag, changes)`` for each point of :data:`TUNE_GRID`, one setting changed at a time from configs/glue.yaml."""
    base = yaml.safe_load((CONFIGS / "glue.yaml").read_text())
    admm = next(c["init_args"] for c in base["trainer"]["callbacks"] if c["class_path"] == ADMM_CALLBACK)
    defaults = {**admm, "learning_rate": base["model"]["init_args"]["learning_rate"]}
    variants = [("_tune_base", {})]
    for key, values in TUNE_GRID.items():
        variants += [(f"_tune_{key}_{value}", {key: value}) for value in values if value != defaults.get(key)]
    return variants


def parse_changes(items: list[str]) -> dict[str, Any]:
    """``["rho=0.1", "end_fraction=0.3"]`` -> ``{"rho": 0.1, "end_fraction": 0.3}`` (values parsed as YAML)."""
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--change {item!r}: write KEY=VALUE, e.g. --change rho=0.1")
        changes[key] = yaml.safe_load(value)
    return changes


def cmd_tune(args: argparse.Namespace) -> None:
    profile = PROFILES[args.profile]
    if args.change:
        changes = parse_changes(args.change)
        variants = [("_tune_" + "_".join(f"{k}_{v}" for k, v in changes.items()), changes)]
    else:
        variants = tune_variants()
    if args.profile != "quick":  # another budget: another run, not the quick profile's record
        variants = [(f"{tag}_{args.profile}", changes) for tag, changes in variants]
    if args.variants:
        variants = [(tag, changes) for tag, changes in variants if tag.removeprefix("_tune_") in args.variants]
    with study_lock(args.work_dir):
        for tag, changes in variants:
            spec = make_spec(args.method, args.task, profile.seeds[0], profile, args)
            if spec is None:
                return
            spec.tag = tag
            spec.model_args = {k: v for k, v in changes.items() if k in MODEL_ARGS}
            callback_args = {k: v for k, v in changes.items() if k not in MODEL_ARGS}
            if callback_args and args.method == "asp":
                raise SystemExit(f"asp has no ADMM phase: {sorted(callback_args)} cannot change; vary {list(MODEL_ARGS)}.")
            spec.callback_args = {ADMM_CALLBACK: callback_args} if callback_args else {}
            execute(spec, args.keep_checkpoints, {"profile": args.profile, "tune": changes})


def cmd_import(args: argparse.Namespace) -> None:
    """Record a finished ``cli.py fit`` run that the study did not start."""
    record = make_record(
        method=args.method, task=args.task, seed=args.seed, run_dir=args.run_dir, command=shlex.split(args.command),
        wall_s=args.wall_s, extra={"export_dir": args.export_dir, "log": args.log, "profile": args.profile, "tag": "",
                                   "imported": True},
    )  # fmt: skip
    path = args.work_dir / "records" / f"{args.method}_{args.task}_s{args.seed}.json"
    write_record(path, record)
    print(f"wrote {path}: best {record['metrics']['best_score']:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / "results" / "study")
    common.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "data" / "glue")))
    common.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    common.add_argument("--keep-checkpoints", action="store_true", help="keep each run's .ckpt files (270 MB each)")

    run = sub.add_parser("run", parents=[common], help="methods x tasks x seeds, resumable")
    run.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    run.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    run.add_argument("--seeds", nargs="+", type=int, help="default: the profile's")
    run.set_defaults(func=cmd_run)

    tune = sub.add_parser("tune", parents=[common], help="sweep nxm, or one point of any method, on one task")
    tune.add_argument("--task", choices=TASKS, default="stsb")
    tune.add_argument("--method", choices=("nxm", "nxm_kd", "asp"), default="nxm", help="the method whose config is varied")
    tune.add_argument("--variants", nargs="+", help="only these points, e.g. rho_0.1 update_every_50 base (default: all)")
    tune.add_argument(
        "--change", nargs="+", metavar="KEY=VALUE", help="one point with these changes, e.g. rho=0.1 end_fraction=0.3"
    )
    tune.set_defaults(func=cmd_tune)

    imp = sub.add_parser("import", parents=[common], help="record a finished cli.py fit run made by hand")
    imp.add_argument("--method", choices=METHODS, required=True)
    imp.add_argument("--task", choices=TASKS, required=True)
    imp.add_argument("--seed", type=int, required=True)
    imp.add_argument("--run-dir", type=Path, required=True, help="the TensorBoard log dir of the run")
    imp.add_argument("--export-dir", required=True)
    imp.add_argument("--command", required=True, help="the command that ran it")
    imp.add_argument("--wall-s", type=float, required=True, help="its wall time in seconds")
    imp.add_argument("--log", default="")
    imp.set_defaults(func=cmd_import)

    args = parser.parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    args.func(args)


if __name__ == "__main__":
    main()
