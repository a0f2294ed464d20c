"""Export a pruned Hugging Face model as a plain ``save_pretrained`` folder plus a ``sparsity.json`` manifest and a
``README.md`` model card.

What ``sparsity.json`` holds (each layer's pattern, its ``layout`` and its counts) is :mod:`.export_format`'s.

Written to a temporary folder beside the target and moved into place only when complete, so that a crash never
leaves a half-written model (and an existing export is replaced only by a finished one). Every export holds a
:data:`MARKER` file: an existing ``export_dir`` is replaced only when it is an export of this project (or empty), and
never when it is, or holds, the working directory, the home directory or the nxm-lightning checkout, because a
replace deletes the whole folder. :func:`check_export_target` tells before training whether the export will succeed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from nxm_lightning.sparsity.export_format import MANIFEST, MANIFEST_FORMATS, sparsity_manifest
from nxm_lightning.sparsity.finite import describe_non_finite, non_finite_names
from nxm_lightning.sparsity.model_card import CARD, CardFacts, card_facts, is_our_model_card, render_model_card
from nxm_lightning.sparsity.nxm import NxMPattern

# Written into every export folder: the proof that a later export to the same path may replace the folder.
MARKER = "nxm-lightning-export.json"
MARKER_FORMAT = "nxm-lightning-export/1"
# The folder that holds the nxm_lightning package: the repository checkout (or site-packages when installed).
CHECKOUT = Path(__file__).resolve().parents[2]


def pretrained_class(export_dir: str | os.PathLike) -> tuple[Any, type]:
    """The config and the ``transformers`` model class of a ``save_pretrained`` folder (its ``config.json``'s first
    architecture): what ONNX export loads and what ``verify`` builds to find the default targets.

    Raises:
        OSError: no readable ``config.json``.
        ValueError: ``config.json`` names no architecture this ``transformers`` has.
    """
    import transformers  # only for exported folders: the core imports with torch alone

    config = transformers.AutoConfig.from_pretrained(export_dir)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise ValueError(
            f"{Path(export_dir) / 'config.json'} names architecture {architecture!r}, which this transformers does not have."
        )
    return config, model_class


def export_pretrained(
    model: Any,
    tokenizer: Any,
    patterns: dict[str, NxMPattern],
    export_dir: str | os.PathLike,
    transposed: Collection[str] = (),
    card: CardFacts | None = None,
) -> Path:
    """Write ``model`` (a transformers PreTrainedModel), ``tokenizer``, ``sparsity.json`` and README.md to ``export_dir``:
    the one export of both callbacks (through :func:`callbacks._export.export_model`).

    Args:
        model: the pruned model.
        tokenizer: saved beside it when not None.
        patterns: ``{state-dict key: pattern}``, e.g. ``{"bert.encoder.layer.0.attention.self.query.weight": 2:4}``;
            empty: a dense model, written without ``sparsity.json`` (its card says dense).
        export_dir: the folder to write: new, empty, or a previous export (replaced only once the new copy is
            complete); anything else is refused (:func:`check_export_target`).
        transposed: the keys whose weight is stored ``[in, out]`` (GPT-2's ``Conv1D``).
        card: the model card's facts; default: what the model itself tells (:func:`card_facts`).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    unknown = sorted(set(patterns) - set(state))
    if unknown:
        raise ValueError(f"Cannot export: pruned layers {unknown[:3]} are not in the model's state dict.")
    manifest = sparsity_manifest(state, patterns, transposed) if patterns else None
    files = {CARD: render_model_card(card or card_facts(model), manifest)}
    if manifest is not None:
        files[MANIFEST] = json.dumps(manifest, indent=2) + "\n"
    return save_pretrained_atomic(model, tokenizer, export_dir, extra_files=files)


def save_pretrained_atomic(
    model: Any, tokenizer: Any, export_dir: str | os.PathLike, extra_files: dict[str, str] | None = None
) -> Path:
    """``save_pretrained`` of model and tokenizer into a staging folder, moved into place only once complete.

    The target is checked (:func:`check_export_target`) before anything is written (the callbacks check it before
    training too, but a folder of someone else's may have appeared there since), and checked again just before a
    previous export is moved aside, since one may also appear while the files are written.
    """
    refuse_non_finite(model, export_dir)
    target = check_export_target(export_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, text in {**(extra_files or {}), MARKER: _marker_text()}.items():
            (staging / name).write_text(text)
        _refuse_to_replace_unless_export(target)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "export")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_export_target(export_dir: str | os.PathLike) -> Path:
    """The resolved ``export_dir``, once sure that an export can be written there without deleting anything else.

    Raises ValueError when the folder is (or holds) the working directory, the home directory or the nxm-lightning
    checkout, when it exists and is neither empty nor an export of this project, or when it cannot be created (a file
    in its path, no write permission). Callbacks call it before training, so that a run is not lost at its end.
    """
    target = Path(export_dir).expanduser().resolve()
    never = {"the working directory": Path.cwd(), "the home directory": Path.home(), "the nxm-lightning checkout": CHECKOUT}
    for what, path in never.items():
        path = path.resolve()
        if target == path or target in path.parents:
            raise ValueError(
                f"export_dir {target} is {what} ({path}) or holds it; an export replaces its whole folder, so it must "
                f"be a folder of its own. Choose another export_dir, e.g. {target / 'exports' / 'model'}."
            )
    _refuse_to_replace_unless_export(target)
    _refuse_uncreatable(target)
    return target


def is_export(folder: Path) -> bool:
    """Whether ``folder`` was written by this project's export: it holds the :data:`MARKER`, or (an export written
    before the marker existed) a ``sparsity.json`` of ours or a README.md model card of ours."""
    marker, manifest, card = folder / MARKER, folder / MANIFEST, folder / CARD
    if marker.is_file():
        return _json_format(marker) == MARKER_FORMAT
    if manifest.is_file():
        return MANIFEST_FORMATS.fullmatch(_json_format(manifest)) is not None
    return card.is_file() and is_our_model_card(card.read_text(errors="replace"))


def _json_format(path: Path) -> str:
    """The ``format`` field of a JSON object file; "" for anything else (unreadable, not JSON, not an object)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ""
    return str(content.get("format", "")) if isinstance(content, dict) else ""


def _marker_text() -> str:
    """The marker's content: a format to recognise it by, and a note for whoever finds the file."""
    note = "Written by nxm-lightning's export: the next export to this folder replaces the whole folder."
    return json.dumps({"format": MARKER_FORMAT, "note": note}, indent=2) + "\n"


def _refuse_to_replace_unless_export(target: Path) -> None:
    """Replacing ``target`` deletes it: allowed only for a missing or empty folder, or an export of this project."""
    if not target.exists():
        return
    if not target.is_dir():
        what = "is a file, not a folder"
    elif any(target.iterdir()) and not is_export(target):
        what = f"already exists and is not an export of nxm-lightning (it holds no {MARKER} of ours)"
    else:
        return
    raise ValueError(
        f"export_dir {target} {what}; the export would replace it and delete its files. Choose another export_dir, "
        "or remove it yourself if it is no longer needed."
    )


def _refuse_uncreatable(target: Path) -> None:
    """Find out now, by creating and removing a folder in the closest existing parent, that the export can be written
    there (permission bits are no test when running as root, nor on a read-only mount)."""
    parent = next(p for p in target.parents if p.exists())
    problem = f"{parent} is a file, not a folder"
    if parent.is_dir():
        try:
            Path(tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=parent)).rmdir()
            return
        except OSError as err:
            problem = str(err)
    raise ValueError(
        f"export_dir {target} cannot be written: {problem}. Choose another export_dir, or fix that folder's permissions."
    )


def refuse_non_finite(model: Any, export_dir: str | os.PathLike) -> None:
    """Refuse to export weights holding NaN or Inf: a diverged model must not replace a good export (or be served)."""
    state = model.state_dict()
    bad = non_finite_names(state)
    if bad:
        raise FloatingPointError(
            f"Refusing to export to {export_dir}: NaN/Inf in {describe_non_finite(bad, len(state))} of the model: "
            "training diverged. Lower the learning rate (or rho) and train again; the previous export is kept."
        )
