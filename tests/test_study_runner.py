"""The study's runner (benchmarks/study/runner.py): workers, deadlines, resuming, rebuilds, the lock, precisions."""

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
from study_helpers import finish, finish_grid_and_sweep, write_events

from benchmarks import glue_study
from benchmarks.study import plan, records, runner
from benchmarks.study.plan import RunSpec, Study


def test_run_trains_ready_runs_two_at_a_time_and_stops_launching_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb", "rte"), seeds=(42,), budgets=("paper",),
                  records_dir=tmp_path / "records")  # fmt: skip
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
            record["run_fingerprint"] = plan.run_fingerprint(spec)
            records.write_record(spec.record_path, record)
            return record

    monkeypatch.setattr(runner, "execute", fake_execute)
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
                  precision=plan.BF16)  # fmt: skip
    finish_grid_and_sweep(study)
    asp = next(item for item in study.runs() if isinstance(item, RunSpec) and item.method == "asp" and item.seed == 42)
    here = records.machine()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    made = {42: (2700.0, here), 43: (1200.0, here), 44: (1300.0, here | {"cpu_native_bf16": not here["cpu_native_bf16"]})}
    for seed, (wall, made_on) in made.items():
        record = finish(study, replace(asp, seed=seed), 80.0)
        records.write_record(replace(asp, seed=seed).record_path, record | {
            "wall_s": wall, "precision": plan.BF16, "threads": 1, "environment": made_on})  # fmt: skip
    # Seeds 42 and 43 alike (the busy machine's 2700 s and 1200 s), seed 44 on the other kind of CPU: left out.
    assert runner.expected_wall_s(asp, threads=1) == statistics.median([2700.0, 1200.0])
    assert runner.expected_wall_s(asp, threads=None) == 2700.0  # two threads a run here: none alike, the longest
    assert runner.expected_wall_s(replace(asp, precision=plan.FP32), threads=1) == 2700.0


def test_finish_within_starts_only_the_runs_another_seed_says_will_end_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    study = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb",), seeds=(42, 43), records_dir=tmp_path / "records")
    monkeypatch.setattr(glue_study, "Study", lambda *args, **kwargs: study)
    for item in study.runs():  # seed 42 finished: 2 hours a paper run, 1 minute a short one, 10 minutes a dense one
        if isinstance(item, RunSpec) and item.seed == 42:
            record = finish(study, item, 80.0) | {"run_fingerprint": plan.run_fingerprint(item)}
            record["wall_s"] = {"paper": 7200.0, "short": 60.0, None: 600.0}[item.budget]
            records.write_record(item.record_path, record)
    seed_43 = [item.name for item in study.runs() if isinstance(item, RunSpec) and item.seed == 43]
    assert len(seed_43) == 7 and sum("_short_" in name for name in seed_43) == 2
    launched: list[str] = []

    def fake_execute(spec: RunSpec, keep_checkpoints: bool, threads: int | None) -> dict | None:
        launched.append(spec.name)
        record = finish(study, spec, 80.0) | {"run_fingerprint": plan.run_fingerprint(spec)}
        records.write_record(spec.record_path, record)
        return record

    def fake_rebuild(spec: RunSpec, threads: int | None) -> bool:
        launched.append(f"rebuild {spec.name}")
        spec.export_dir.mkdir(parents=True)
        return True

    monkeypatch.setattr(runner, "execute", fake_execute)
    monkeypatch.setattr(runner, "rebuild_export", fake_rebuild)
    dense = study.best_dense("stsb")
    shutil.rmtree(dense.export_dir)  # a new machine: the rebuild (10 min) and a short run (1 min) fit in an hour
    glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--finish-within", "1"])
    assert launched == [f"rebuild {dense.name}", *(name for name in seed_43 if "_short_" in name)]
    assert "5 runs left are not expected to end within --finish-within" in capsys.readouterr().out
    nxm_paper = next(item for item in study.runs() if isinstance(item, RunSpec) and item.method == "nxm_paper")
    assert runner.expected_wall_s(nxm_paper) == 7200.0  # its own record
    nxm_paper.record_path.unlink()
    assert runner.expected_wall_s(nxm_paper) == 1.5 * 7200.0  # none of its seeds: the longest paper run, and room
    assert runner.expected_wall_s(replace(nxm_paper, task="rte")) is None  # no run of the task has finished
    shutil.rmtree(dense.export_dir)
    launched.clear()
    glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--finish-within", "0.1"])  # 6 min: no rebuild
    assert launched == []
    with pytest.raises(SystemExit):
        glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--finish-within", "soon"])
    assert "'soon' is not a number of hours > 0" in capsys.readouterr().err


def test_a_record_stays_current_on_another_machine_and_goes_stale_when_the_run_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "a", "../shared/data/glue", records_dir=tmp_path / "r")
    elsewhere = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "b", "/data/glue", records_dir=tmp_path / "r")
    assert plan.run_fingerprint(spec) == plan.run_fingerprint(elsewhere)
    records.write_record(spec.record_path, {"run_fingerprint": plan.run_fingerprint(spec)})
    started: list[list[str]] = []
    monkeypatch.setattr(runner, "run_command", lambda command, log, threads: started.append(command) or (1, 0.0))
    assert runner.execute(elsewhere) is not None and started == []
    spec.epochs = 3  # another budget under the same name: the record is stale, the run starts again (and fails here)
    assert runner.execute(spec) is None and len(started) == 1
    assert not spec.record_path.exists() and (spec.record_path.parent / "stale" / spec.record_path.name).exists()


def test_a_missing_dense_export_is_rebuilt_from_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    fingerprint = plan.run_fingerprint(spec)
    records.write_record(spec.record_path, {"name": spec.name, "metrics": {"best_score": 60.0},
                                               "run_fingerprint": fingerprint})  # fmt: skip
    spec.run_dir.mkdir(parents=True)  # what the finished run left, which must not stop the rebuild
    (spec.run_dir / "fingerprint").write_text(fingerprint)
    (spec.run_dir / "fit_done.json").write_text('{"wall_s": 1.0, "cpu_s": 1.0}')

    def rerun(command: list[str], log: object, threads: int | None) -> tuple[int, float]:
        assert command == spec.command() and not (spec.run_dir / "fit_done.json").exists()
        # It stops at the first epoch that scores the record's best (an equal score counts).
        callbacks = yaml.safe_load(spec.config_path.read_text())["trainer"]["callbacks"]
        early = next(c["init_args"] for c in callbacks if c["class_path"] == plan.EARLY_STOPPING)
        assert 59.99 < early["stopping_threshold"] < 60.0 and early["patience"] == plan.DENSE_PATIENCE
        spec.export_dir.mkdir(parents=True)
        write_events(spec.run_dir, {"val/score": [(78, 59.0), (156, 60.5)]})
        return 0, 1.0

    monkeypatch.setattr(runner, "run_command", rerun)
    assert runner.rebuild_export(spec)
    record = json.loads(spec.record_path.read_text())
    assert record["metrics"]["best_score"] == 60.0 and [r["best_score"] for r in record["rebuilds"]] == [60.5]
    assert record["rebuilds"][0]["best_step"] == 156
    assert records.current_record(spec) is not None  # the planned run, without the threshold, stays current
    # The sparse runs that start from the rebuild say so; an export without the note is the original run's.
    assert records.dense_start_score(spec.export_dir, spec.records_dir) == 60.5
    (spec.export_dir / records.DENSE_BUILD).unlink()
    assert records.dense_start_score(spec.export_dir, spec.records_dir) == 60.0


def test_a_killed_run_resumes_from_its_last_checkpoint_and_its_void_events_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    # What a session's end leaves: the run's marker, events up to its checkpoint, the checkpoint, then events after it.
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "fingerprint").write_text(plan.run_fingerprint(spec))
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

    monkeypatch.setattr(runner, "run_command", attempt)
    assert runner.train(spec) is None and (spec.run_dir / "fingerprint").exists()  # stopped: still resumable
    assert not (spec.run_dir / "fit_done.json").exists()
    finished = runner.train(spec)
    assert finished is not None and finished[2] == 2.0  # the CPU seconds of both attempts
    assert commands[0][-2:] == commands[1][-2:] == ["--ckpt_path", str(last)]
    scalars = records.read_scalars(spec.run_dir)
    assert scalars["val/score"] == [(78, 50.0), (156, 55.0), (234, 58.0)]
    assert scalars["train/loss"] == [(150, 0.75), (160, 0.625), (190, 0.375)] and "prune/score_after" not in scalars
    # Finished but not recorded (the driver was killed in between): not trained again.
    assert runner.train(spec) is not None and len(commands) == 2
    # The same name with another config (here another budget) is another run: from scratch; and so after a failure.
    spec.epochs = 3
    assert runner.train(spec) is None and "--ckpt_path" not in commands[2]
    assert not (spec.run_dir / "fingerprint").exists() and not last.exists()


def test_a_run_left_training_keeps_the_study_locked_and_stopping_the_driver_stops_its_runs(tmp_path: Path) -> None:
    log = open(tmp_path / "log", "w")  # noqa: SIM115  (the children write to it)
    results: list[tuple[int, float]] = []

    def start(seconds: float) -> threading.Thread:
        command = [sys.executable, "-c", f"import time; time.sleep({seconds})"]
        thread = threading.Thread(target=lambda: results.append(runner.run_command(command, log, None)))
        thread.start()
        time.sleep(0.5)
        return thread

    with runner.study_lock(tmp_path):
        orphan = start(2.0)
    # The driver's lock is gone (as when it is killed), its run is not: a second driver must not start beside it.
    with pytest.raises(SystemExit, match="Another study process"), runner.study_lock(tmp_path):
        pass
    orphan.join()
    with runner.study_lock(tmp_path):  # free once the run ended
        stopped = start(60.0)
        runner.stop_children()
        stopped.join(timeout=10)
    runner._stopping.clear()
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
    assert plan.run_fingerprint(fp32) == plan.run_fingerprint(bf16)
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

    monkeypatch.setattr(runner, "run_command", stopped_then_done)
    assert runner.train(bf16) is None  # stopped midway in bf16 ...
    assert runner.execute(fp32) is not None  # ... and resumed by a driver that starts new runs in fp32
    assert commands[1][-4:] == ["--trainer.precision", "bf16-mixed", "--ckpt_path", str(bf16.run_dir / "checkpoints/last.ckpt")]
    assert json.loads(fp32.record_path.read_text())["precision"] == "bf16-mixed"
    # Rebuilding its missing export on a machine whose new runs are fp32 trains in the record's bf16 again.
    shutil.rmtree(bf16.export_dir)
    rebuild = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    assert runner.rebuild_export(rebuild) and commands[2][-2:] == ["--trainer.precision", "bf16-mixed"]


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
    assert runner.resolve_precision("auto") == expected
    assert runner.resolve_precision("32-true") == "32-true"


def test_a_missing_dense_export_is_rebuilt_by_one_worker_while_the_other_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = Study(tmp_path / "work", "../shared/data/glue", tasks=("stsb", "rte"), seeds=(42,), budgets=("paper",),
                  records_dir=tmp_path / "records")  # fmt: skip
    for spec, score in zip(study.dense_grid("stsb"), (84.0, 86.0, 85.0)):
        record = finish(study, spec, score)
        record["run_fingerprint"] = plan.run_fingerprint(spec)
        records.write_record(spec.record_path, record)
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

    monkeypatch.setattr(runner, "rebuild_export", fake_rebuild)
    monkeypatch.setattr(runner, "execute", fake_execute)
    glue_study.main(["run", "--work-dir", str(tmp_path / "work"), "--workers", "2"])
    assert ("rebuild start", study.dense_grid("stsb")[1].name) in events  # the best of the grid
    before_rebuilt = events[: events.index(("rebuild end", study.dense_grid("stsb")[1].name))]
    runs_meanwhile = [name for kind, name in before_rebuilt if kind == "run"]
    assert runs_meanwhile and all("_rte_" in name for name in runs_meanwhile), events
    assert len([e for e in events if e[0] == "rebuild start"]) == 1


def test_a_config_edited_while_a_run_trains_leaves_its_record_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    trained_under = plan.run_fingerprint(spec)
    original = plan.method_config

    def edited(method: str) -> dict:
        config = original(method)
        config["model"]["init_args"]["weight_decay"] = 0.1
        return config

    def train_then_edit(command: list[str], log: object, threads: int | None) -> tuple[int, float]:
        write_events(spec.run_dir, {"val/score": [(78, 60.0)]})
        monkeypatch.setattr(plan, "method_config", edited)  # someone edits configs/ while the run trains
        return 0, 1.0

    monkeypatch.setattr(runner, "run_command", train_then_edit)
    assert runner.execute(spec) is not None
    assert json.loads(spec.record_path.read_text())["run_fingerprint"] == trained_under
    assert records.current_record(spec) is None  # stale under the edited config: it runs again


def test_a_run_stopped_before_its_first_checkpoint_starts_again_in_the_drivers_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bf16 = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records",
                   precision="bf16-mixed")  # fmt: skip
    commands: list[list[str]] = []
    monkeypatch.setattr(runner, "run_command", lambda command, log, threads: commands.append(command) or (143, 1.0))
    assert runner.train(bf16) is None  # stopped in its first epoch: no checkpoint
    fp32 = RunSpec("dense", "rte", 42, 10, 1e-4, tmp_path / "work", "glue", records_dir=tmp_path / "records")
    assert runner.train(fp32) is None
    assert "--trainer.precision" not in commands[1] and "--ckpt_path" not in commands[1]
