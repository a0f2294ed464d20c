"""The README's resume command, as a user types it: ``python cli.py fit --config ... --ckpt_path last`` after a crash
continues the crashed run (its logger version, its checkpoint) to the same final weights as a run never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from jsonargparse import Namespace

import cli

LOGGERS = {
    "shipped": None,  # the config's own TensorBoardLogger (runs/glue_dense/version_N)
    "csv": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs", "name": "mine"}},
}


def write_config(folder: Path, logger: dict | None, kill_at: int | None, shipped: str = "glue_dense.yaml") -> Path:
    """configs/``shipped`` with its export in ``folder``, optionally another logger and a crash at ``kill_at``."""
    config = yaml.safe_load((REPO / "configs" / shipped).read_text())
    for callback in config["trainer"]["callbacks"]:
        if "export_dir" in callback["init_args"]:
            callback["init_args"]["export_dir"] = str(folder / "export")
        if "update_every" in callback["init_args"]:
            callback["init_args"]["update_every"] = 2  # 4 steps an epoch here
    if logger is not None:
        config["trainer"]["logger"] = logger
    if kill_at is not None:
        config["trainer"]["callbacks"].append({"class_path": "sigkill_callback.SigkillAtEpoch", "init_args": {"epoch": kill_at}})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(folder: Path, config: Path, model: Path, glue_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python cli.py fit --config CONFIG ...`` with ``folder`` as the working directory (runs/ and logs/ go there)."""
    command = [
        sys.executable, str(REPO / "cli.py"), "fit", "--config", str(config), f"--model.init_args.model_name_or_path={model}",
        "--data.task_name=rte", f"--data.data_dir={glue_dir}", "--data.max_train_samples=32", "--data.max_eval_samples=16",
        "--data.max_seq_length=32", "--data.batch_size=8", "--trainer.max_epochs=4", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env, timeout=600)


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    (last,) = folder.glob("**/checkpoints/last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    return {name: tensor for name, tensor in state.items() if name.startswith("model.")}


@pytest.mark.parametrize(
    ("logger", "shipped", "kill_at"),
    [("shipped", "glue_dense.yaml", 2), ("csv", "glue_dense.yaml", 2), ("shipped", "glue.yaml", 3)],
)
def test_the_readme_resume_command_continues_a_killed_run_to_the_same_weights(
    tmp_path: Path, tiny_bert_2labels: Path, glue_dir: Path, logger: str, shipped: str, kill_at: int
) -> None:
    """glue.yaml (the main job) is killed in its ADMM phase, after its teacher snapshot."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    straight.mkdir(), crashed.mkdir()
    done = fit(straight, write_config(straight, LOGGERS[logger], None, shipped), tiny_bert_2labels, glue_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    config = write_config(crashed, LOGGERS[logger], kill_at, shipped)
    killed = fit(crashed, config, tiny_bert_2labels, glue_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (crashed / "export").exists()
    resumed = fit(crashed, config, tiny_bert_2labels, glue_dir, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "no last checkpoint available" not in resumed.stderr
    # One run folder: the resumed fit logged and checkpointed where the crashed one did.
    assert [d.name for d in crashed.glob("*/*/version_*")] == ["version_0"]
    expected, got = final_weights(straight), final_weights(crashed)
    assert expected.keys() == got.keys()
    for name, weight in expected.items():
        assert torch.equal(got[name], weight), name


def test_resume_without_a_checkpoint_is_an_error_naming_where_it_looked(
    tmp_path: Path, tiny_bert_2labels: Path, glue_dir: Path
) -> None:
    result = fit(tmp_path, write_config(tmp_path, None, None), tiny_bert_2labels, glue_dir, "--ckpt_path", "last")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "found no last.ckpt in runs/glue_dense/version_*/checkpoints" in error[0]
    assert not (tmp_path / "runs").exists()  # refused before anything was trained or logged


def fit_config(logger: object, dirpath: str | None = None, root: str | None = None) -> Namespace:
    return Namespace(ckpt_path="last", checkpoint=Namespace(dirpath=dirpath),
                     trainer=Namespace(logger=logger, default_root_dir=root))  # fmt: skip


def touch_last(folder: Path, name: str = "last.ckpt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"")
    return folder / name


def test_resume_with_an_unknown_logger_needs_a_dirpath(tmp_path: Path) -> None:
    logger = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(project="p"))
    with pytest.raises(ValueError, match="cannot tell where a lightning.pytorch.loggers.WandbLogger logger's runs"):
        cli.resolve_last_checkpoint(fit_config(logger))
    last = touch_last(tmp_path / "ckpt")
    config = fit_config(logger, dirpath=str(tmp_path / "ckpt"))
    cli.resolve_last_checkpoint(config)
    assert config.ckpt_path == str(last)


def test_resume_picks_the_newest_run_and_continues_its_version(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "glue"
    older = touch_last(runs / "version_3" / "checkpoints")
    newer = touch_last(runs / "version_10" / "checkpoints", "last-v1.ckpt")
    os.utime(older, (1, 1))
    touch_last(runs / "version_x" / "checkpoints")  # not a numbered run: ignored
    os.utime(runs / "version_x" / "checkpoints" / "last.ckpt", (2**31, 2**31))
    logger = Namespace(class_path=cli.VERSIONED_LOGGERS[0], init_args=Namespace(save_dir=str(tmp_path / "runs"), name="glue"))
    config = fit_config(logger)
    cli.resolve_last_checkpoint(config)
    assert (config.ckpt_path, logger.init_args.version) == (str(newer), 10)
    # A fixed version is that run's folder only; Lightning's default logger (true) lives in default_root_dir.
    logger.init_args.version = "v3"
    with pytest.raises(FileNotFoundError, match="found no last.ckpt in .*runs/glue/v3/checkpoints"):
        cli.resolve_last_checkpoint(fit_config(logger))
    default = touch_last(tmp_path / "lightning_logs" / "version_0" / "checkpoints")
    config = fit_config(True, root=str(tmp_path))
    cli.resolve_last_checkpoint(config)
    assert config.ckpt_path == str(default) and config.trainer.logger.init_args.version == 0
    config = fit_config(False, root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"no last.ckpt in {tmp_path}/checkpoints"):
        cli.resolve_last_checkpoint(config)


def test_a_checkpoint_of_random_bytes_is_one_line_before_any_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It gave torch.load's unpickling traceback, whose advice (weights_only=False) would run arbitrary code."""
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(os.urandom(4096))
    command = ["cli.py", "fit", "--config", "glue_dense.yaml", "--ckpt_path", str(broken)]
    result = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    assert len(errors) == 1 and "is not a PyTorch checkpoint (not a zip archive" in errors[0]
    for checkpoint, message in (
        (broken, "is not a PyTorch checkpoint"),
        (tmp_path / "nowhere.ckpt", "nowhere.ckpt: no such file"),
    ):
        monkeypatch.setattr(sys, "argv", ["cli.py", "validate", "--config", "glue_dense.yaml", "--ckpt_path", str(checkpoint)])
        with pytest.raises(SystemExit) as exit_:
            cli.run()
        stderr = capsys.readouterr().err
        assert exit_.value.code == 1 and message in stderr and "Traceback" not in stderr
