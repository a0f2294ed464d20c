"""nxm-lightning command line: ``python cli.py fit --config configs/glue.yaml`` (LightningCLI: fit/validate/test/predict)."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.best_and_last_checkpoint import BestAndLastCheckpoint
from callbacks.rng_state import RNGStateCallback
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

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            resolve_last_checkpoint(self.config["fit"])


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
    versions: dict[Path, Any] = {}  # checkpoint folder -> logger version that writes it
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
    """Run the CLI on ``argv``, or on the command line (rewritten in place: DDP re-launches ``sys.argv``)."""
    if argv is None:
        sys.argv[1:] = resolve_config_paths(sys.argv[1:])
    return NxMLightningCLI(
        SequenceClassificationModule,
        GLUEDataModule,
        subclass_mode_model=True,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=None if argv is None else resolve_config_paths(argv),
    )


# The errors this project raises for bad input; their messages say what was wrong and how to fix it.
USER_ERRORS = (ValueError, FileNotFoundError, OSError, RuntimeError, TypeError, FloatingPointError)


def run() -> None:
    """``main()`` for the shell: a bad input prints its message, not a traceback (NXM_TRACEBACK=1 shows it)."""
    try:
        main()
    except SIGTERMException:
        # Lightning stops a fit gracefully on SIGTERM and would exit 0, as if it had finished: say it did not.
        sys.exit(128 + signal.SIGTERM)
    except USER_ERRORS as err:
        if os.environ.get("NXM_TRACEBACK"):
            raise
        sys.exit(f"error: {type(err).__name__}: {err}\n(set NXM_TRACEBACK=1 for the full traceback)")


if __name__ == "__main__":
    run()
