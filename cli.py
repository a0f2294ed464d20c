"""nxm-lightning command line: ``python cli.py fit --config configs/glue.yaml`` (LightningCLI: fit/validate/test/predict)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.best_and_last_checkpoint import BestAndLastCheckpoint
from callbacks.finite_guard import FiniteGuardCallback
from callbacks.progress_log import ProgressLogCallback
from callbacks.rng_state import RNGStateCallback
from nxm_lightning.sparsity.precision import has_fast_bf16_cpu, recommended_precision
from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.module import SequenceClassificationModule

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# The loggers whose runs live in save_dir/name/version_N (or save_dir/name/<version>), where ModelCheckpoint puts its
# checkpoints/ folder when no dirpath is set.
VERSIONED_LOGGERS = ("lightning.pytorch.loggers.TensorBoardLogger", "lightning.pytorch.loggers.CSVLogger")
LAST_CHECKPOINT = re.compile(r"last(-v\d+)?\.ckpt")  # last.ckpt, or last-vN.ckpt beside an older one


class NxMLightningCLI(LightningCLI):
    """LightningCLI with the GLUE links: the task and tokenizer follow the model, num_labels follows the task."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.model_name_or_path")
        parser.link_arguments("data.task_name", "model.init_args.task_name")
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        # Always on: without RNG states in the checkpoint, a resumed run's dropout and shuffling would differ.
        parser.add_lightning_class_args(RNGStateCallback, "rng_state")
        # Plain progress lines when stdout is a file (nohup, CI): the progress bar shows nothing there until fit ends.
        parser.add_lightning_class_args(ProgressLogCallback, "progress_log")
        # Always on: a diverged fit stops before a checkpoint holds NaN, dense phase and dense configs included.
        parser.add_lightning_class_args(FiniteGuardCallback, "finite_guard")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/score",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "glue", "default_hp_metric": False},
                },
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then resolve and check ``ckpt_path`` before LightningCLI reads the checkpoint's hyperparameters."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand == "fit":
            resolve_last_checkpoint(self.config["fit"])
        if subcommand is not None:
            choose_precision(self.config[subcommand].trainer)
            check_checkpoint_file(self.config[subcommand].get("ckpt_path"))


def choose_precision(trainer: Namespace) -> None:
    """With no ``--trainer.precision``, run in ``bf16-mixed`` where the hardware computes bf16 natively (a GPU of
    compute capability 8.0+, a CPU with ``avx512_bf16`` or ``amx_bf16``), and say so in one line.

    On such a CPU a step of the main job took 0.64x the fp32 time and its STS-B scores (3 seeds) were within fp32's
    seed spread (docs/BENCHMARKS.md); elsewhere bf16 is emulated (19x slower) or needs fp16's gradient scaler, so Lightning's
    ``32-true`` stays. Every subcommand alike, so that ``validate`` reproduces the score a fit logged.
    """
    accelerator = trainer.get("accelerator")
    if trainer.get("precision") is not None or accelerator not in ("auto", "cpu", "gpu", "cuda"):
        return
    on_gpu = accelerator != "cpu" and torch.cuda.is_available()
    precision, reason = recommended_precision(torch.cuda.get_device_capability() if on_gpu else None, has_fast_bf16_cpu())
    if precision == "bf16-mixed":
        trainer.precision = precision
        rank_zero_info(f"Precision bf16-mixed: {reason} (scores as fp32's within the seed spread, 0.64x "
                       "the time: docs/BENCHMARKS.md); --trainer.precision 32-true for fp32")  # fmt: skip


def check_checkpoint_file(ckpt_path: str | None) -> None:
    """Refuse a ``--ckpt_path`` file that cannot be a checkpoint, before any model is built.

    ``torch.save`` writes a zip archive; anything else (a truncated copy, random bytes, a wrong file) would fail deep
    in ``torch.load`` with an unpickling traceback whose advice, ``weights_only=False``, runs arbitrary code.
    Lightning's names (``last``, ``best``, ``hpc``, registry paths) are left to Lightning.
    """
    if ckpt_path is None or ckpt_path in ("last", "best", "hpc") or not ckpt_path.endswith(".ckpt"):
        return
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such file. Give a .ckpt written by a fit, or 'last'.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"--ckpt_path {ckpt_path} is not a PyTorch checkpoint (not a zip archive: truncated, corrupt or another "
            "kind of file). Use another checkpoint of the run (e.g. a best-*.ckpt beside it), or leave --ckpt_path out."
        )


def resolve_last_checkpoint(fit: Namespace) -> None:
    """``fit --ckpt_path last``: find the newest ``last.ckpt`` of the run the config describes, and continue that run.

    Lightning looks for ``last.ckpt`` in the checkpoint folder of the run it starts, and a logger that numbers its runs
    (TensorBoardLogger's ``version_N``, every shipped config's) gives each new run a new folder: Lightning would never
    find one, warn, and train from step 0. Here the folder is ``checkpoint.dirpath`` when set, else the logger's
    fixed ``version``, else the newest ``last.ckpt`` among the logger's ``version_*`` runs, whose version the logger
    then continues in. No ``last.ckpt`` is an error that names the folders searched, never a fresh start.

    Args:
        fit: the parsed ``fit`` config; its ``ckpt_path`` and logger version are set in place.

    Raises:
        FileNotFoundError: no ``last.ckpt`` where the run keeps its checkpoints.
        ValueError: a logger whose checkpoint folder cannot be told from its config, without ``checkpoint.dirpath``.
    """
    if fit.get("ckpt_path") != "last":
        return
    dirpath = fit.get("checkpoint.dirpath")
    root = fit.trainer.get("default_root_dir") or "."
    logger = _first_logger(fit.trainer, root)
    versions: dict[Path, int] = {}  # checkpoint folder -> the logger version that writes it
    if dirpath is not None:
        folders = [Path(dirpath)]
    elif logger is None:  # no logger: ModelCheckpoint writes to default_root_dir/checkpoints
        folders = [Path(root) / "checkpoints"]
    elif logger.get("class_path") not in VERSIONED_LOGGERS:
        raise ValueError(
            f"--ckpt_path last cannot tell where a {logger.get('class_path')} logger's runs keep their checkpoints: set "
            "--checkpoint.dirpath DIR (in the first run too), or pass the checkpoint file: --ckpt_path DIR/last.ckpt."
        )
    else:
        args = logger.get("init_args") or Namespace()
        runs = Path(args.get("save_dir") or root) / str(args.get("name", "lightning_logs"))
        version = args.get("version")
        if version is not None:
            folders = [runs / (version if isinstance(version, str) else f"version_{version}") / "checkpoints"]
        else:
            numbered = [d for d in runs.glob("version_*") if d.name.removeprefix("version_").isdigit()]
            versions = {d / "checkpoints": int(d.name.removeprefix("version_")) for d in numbered}
            folders = sorted(versions) or [runs / "version_*" / "checkpoints"]
    found = [path for folder in folders if folder.is_dir() for path in folder.iterdir() if LAST_CHECKPOINT.fullmatch(path.name)]
    if not found:
        searched = ", ".join(str(folder) for folder in folders)
        raise FileNotFoundError(
            f"--ckpt_path last found no last.ckpt in {searched}: a fit writes one at every epoch end, so the run to "
            "resume had not finished an epoch, or used another logger save_dir/name or checkpoint.dirpath. Pass the "
            "checkpoint file (--ckpt_path PATH), or leave --ckpt_path out to train from scratch."
        )
    newest = max(found, key=lambda path: path.stat().st_mtime)
    fit.ckpt_path = str(newest)
    if newest.parent in versions:  # continue logging (and checkpointing) in the resumed run's folder
        logger.init_args.version = versions[newest.parent]


def _first_logger(trainer: Namespace, root: str) -> Namespace | None:
    """The config of the logger whose folder ModelCheckpoint uses (the first of a list); None for no logger.

    ``logger: true`` (Lightning's default logger) is spelled out as the TensorBoardLogger it is, in
    ``default_root_dir/lightning_logs``, so that a resume can set its version."""
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if logger is True:
        logger = Namespace(class_path=VERSIONED_LOGGERS[0], init_args=Namespace(save_dir=root, name="lightning_logs"))
        trainer.logger = logger
    return logger or None


def resolve_config_paths(argv: list[str]) -> list[str]:
    """``--config glue.yaml`` also finds ``configs/glue.yaml`` when the given path does not exist."""
    resolved = list(argv)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = _find_config(resolved[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + _find_config(arg.split("=", 1)[1])
    return resolved


def _find_config(path: str) -> str:
    if Path(path).exists():
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / Path(path).name):
        if candidate.exists():
            return str(candidate)
    available = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    raise SystemExit(f"error: config file {path!r} not found, nor under {CONFIG_DIR}. Available configs: {available}")


def main(argv: list[str] | None = None) -> NxMLightningCLI:
    """Run the CLI on ``argv``, or on the command line (rewritten in place: DDP re-launches ``sys.argv``).

    A bad argument raises ``argparse.ArgumentError`` (for :func:`run` to print as one line) instead of jsonargparse's
    usage dump and exit."""
    if argv is None:
        sys.argv[1:] = resolve_config_paths(sys.argv[1:])
    return NxMLightningCLI(
        SequenceClassificationModule,
        GLUEDataModule,
        subclass_mode_model=True,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False, **{command: {"exit_on_error": False} for command in SUBCOMMANDS}},
        args=None if argv is None else resolve_config_paths(argv),
    )


SUBCOMMANDS = ("fit", "validate", "test", "predict")
# The errors this project raises for bad input; their messages say what was wrong and how to fix it. Printed as one
# line only when raised by the project's own code (or by the argument parser): the same types raised inside torch or
# transformers are bugs or system faults, whose traceback the user (and we) need.
USER_ERRORS = (ValueError, FileNotFoundError, OSError, RuntimeError, TypeError, FloatingPointError)
PROJECT_CODE = tuple(str(Path(__file__).resolve().parent / part) for part in ("nxm_lightning", "callbacks", "cli.py"))
# jsonargparse's lines that only frame the error that matters (a Union's other members, the value echoed back).
PARSER_FRAMING = ("Does not validate against", "Subtypes:", "Errors:", "Not a valid subclass", "Given value")


def raised_by_project(err: BaseException) -> bool:
    """Whether ``err`` was raised (its last traceback frame) in this project's code."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.startswith(PROJECT_CODE)


def user_error_line(err: BaseException) -> str | None:
    """One line for a bad input: the project's own message (a class's constructor named), or the innermost complaint of
    the argument parser with the argument's path; None for anything else (a bug: show its traceback)."""
    if isinstance(err, argparse.ArgumentError):
        return parser_error_line(str(err))
    root = err
    while root.__cause__ is not None:  # jsonargparse wraps a constructor's ValueError in its own Union error
        root = root.__cause__
    if not isinstance(root, USER_ERRORS) or not raised_by_project(root):
        return None
    return f"{type(root).__name__}: {constructor_of(root)}{root}"


def constructor_of(err: BaseException) -> str:
    """``"NxMSparsifyCallback: "`` when ``err`` was raised inside a constructor (a config-time error): the outermost
    one, the class the user configured (not a helper it validates with); "" otherwise."""
    tb = err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self") if tb.tb_frame.f_code.co_name == "__init__" else None
        if owner is not None and not isinstance(owner, LightningCLI):
            return f"{type(owner).__name__}: "
        tb = tb.tb_next
    return ""


def parser_error_line(message: str) -> str:
    """jsonargparse's nested message as ``key: class_path: key: complaint``, with a hint for an unquoted N:M pattern."""
    path: list[str] = []
    complaint = message.strip()
    for line in message.splitlines():
        text = line.strip().removeprefix("- ").strip()
        key = re.fullmatch(r"Parser key \"(.+)\":|Problem with given class_path '(.+)':", text)
        if key:
            path.append(key[1] or key[2])
        elif text and not text.startswith(PARSER_FRAMING):
            complaint = text
            break
    hint = ""
    number = re.search(r"Got value: (\d+)$", complaint)
    if path and path[-1] in ("pattern", "default_pattern") and number:
        # YAML 1.1 reads an unquoted 2:4 as a base-60 integer: 2 * 60 + 4 = 124.
        n, m = divmod(int(number[1]), 60)
        hint = f' (YAML reads an unquoted {n}:{m} as the number {number[1]}: quote it, pattern: "{n}:{m}")'
    return f"ArgumentError: {': '.join([*path, complaint])}{hint}. Run with --help for the valid arguments"


def run() -> None:
    """``main()`` for the shell: a bad input prints its message, not a traceback (NXM_TRACEBACK=1 shows it)."""
    try:
        main()
    except SIGTERMException:
        # Lightning stops a fit gracefully on SIGTERM and would exit 0, as if it had finished: say it did not.
        sys.exit(128 + signal.SIGTERM)
    except (argparse.ArgumentError, *USER_ERRORS) as err:
        line = user_error_line(err)
        if line is None or os.environ.get("NXM_TRACEBACK"):
            raise
        print(f"error: {line}\n(set NXM_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2 if isinstance(err, argparse.ArgumentError) else 1)  # 2: a usage error, as argparse exits


if __name__ == "__main__":
    run()
