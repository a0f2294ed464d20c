"""nxm-lightning command line: ``python cli.py fit --config configs/glue.yaml`` (LightningCLI: fit/validate/test/predict)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.best_and_last_checkpoint import BestAndLastCheckpoint
from callbacks.finite_guard import FiniteGuardCallback
from callbacks.rng_state import RNGStateCallback
from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.module import SequenceClassificationModule

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class NxMLightningCLI(LightningCLI):
    """LightningCLI with the GLUE links: the task and tokenizer follow the model, num_labels follows the task."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.model_name_or_path")
        parser.link_arguments("data.task_name", "model.init_args.task_name")
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        # Always on: without RNG states in the checkpoint, a resumed run's dropout and shuffling would differ.
        parser.add_lightning_class_args(RNGStateCallback, "rng_state")
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
