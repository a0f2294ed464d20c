"""A finished run as the study keeps it: its metrics read from the TensorBoard events, the JSON record under
``benchmarks/records/`` (written atomically, moved to ``stale/`` when its run changed), the machine it was made on and
the run dir's bookkeeping files (attempts, resumes, the dense build an export holds).

Apart from the runner so that the report and ``main_job.py`` read runs without the subprocess and signal machinery.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shlex
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.study.plan import REPO, RunSpec, run_fingerprint

# In a dense export: the dev score of the model it holds. A rebuild on another machine trains a slightly different
# model (SST-2: 87.16 on an AMD EPYC against 86.58 recorded on a Xeon), so each sparse record says which it started from.
DENSE_BUILD = "study_build.json"
# The series a record keeps whole (the ADMM dashboard the report plots) and the packages whose versions it states.
CURVES = (
    "admm/primal_residual", "admm/dual_residual", "admm/mask_flip_rate", "admm/rho", "admm/w_step_progress",
    "val_pruned/score", "train/loss",
    # DistillationModule's loss terms, to tell a student that cannot match its teacher from one that overfits.
    "train/task_loss", "train/kd_loss", "train/hidden_loss",
)  # fmt: skip
PACKAGES = ("torch", "lightning", "transformers", "datasets", "torchmetrics", "tensorboard", "nxm-lightning")


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

    from nxm_lightning.sparsity.export_format import MANIFEST, as_out_in
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


def read_attempts(run_dir: Path) -> list[list[float]]:
    """The wall and CPU seconds of each attempt of the run that the driver saw end."""
    path = run_dir / "attempts.json"
    return json.loads(path.read_text()) if path.exists() else []


def read_resumes(run_dir: Path) -> list[tuple[float, float]]:
    """For each resume of the run: when the checkpoint it resumed from was written, and when it started (epoch s)."""
    path = run_dir / "resumes.json"
    return [tuple(pair) for pair in json.loads(path.read_text())] if path.exists() else []


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


def load_records(directory: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` record directly under ``directory`` (not ``stale/``), in finishing order."""
    records = [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]
    return sorted(records, key=lambda r: r.get("finished_at", ""))
