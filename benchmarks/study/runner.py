"""Training the study's runs: ``cli.py fit`` in a subprocess (resumed from its last checkpoint when stopped), a
lock that keeps one study per work dir, a thread pool that keeps ``--workers`` ready runs training, the rebuild of a
missing dense export, ``--finish-within`` and the SIGTERM handling that stops the runs with the driver.

Process-wide state (the lock's descriptor, the live children, whether the driver is stopping) lives here alone: every
run of one driver shares it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from benchmarks.study.plan import BF16, EARLY_STOPPING, FP32, REPO, SEEDS, RunSpec, Study, Waiting, run_fingerprint
from benchmarks.study.records import (
    current_record,
    dense_start_score,
    kept_share,
    machine,
    make_record,
    note_dense_build,
    read_attempts,
    read_resumes,
    run_metrics,
    write_record,
)

REBUILD_SCORE_SLACK = 1e-3  # GLUE points below a record's best that a rebuild may stop at
PRECISIONS = ("auto", FP32, BF16)  # auto: bf16-mixed where the CPU or GPU has native bf16, else fp32


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
