"""Check N:M compliance of an exported model folder or ONNX file: ``python -m nxm_lightning.sparsity.verify DIR_OR_ONNX``.

Exit status 0: every layer listed in ``sparsity.json`` (or, for an ``.onnx`` file, fp32 or INT8, in the sparsity record
that :mod:`nxm_lightning.sparsity.onnx_export` embeds; an int8 weight's zero point must be 0) satisfies its pattern,
and, for a folder, the manifest lists every default target of the folder's model; 1: a violation (the layer and its
first bad group are printed) or default targets missing from the manifest (named); 2: the path could not be checked
(not an nxm-lightning export, a malformed manifest, truncated or corrupt weights): one ``error:`` line.

A folder's manifest is not taken at its word: the model is built from ``config.json`` (on the meta device: no weights,
no memory) and its default targets (:func:`nxm_lightning.sparsity.targets.select_targets`) must all be listed, so an
emptied manifest, or one whose entry was removed after that layer's weight was changed, fails. A default target the
manifest does not list fails even when its weight happens to be N:M: the manifest (and the model card made from it)
would misstate the export. An export whose ``include`` / ``exclude`` left default targets dense on purpose fails this
check too; a default target whose width is not a multiple of M (skipped by the target selection) is not required.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import warnings
from pathlib import Path

import torch

from nxm_lightning.sparsity.export import pretrained_class
from nxm_lightning.sparsity.export_format import MANIFEST, VerifyError, layer_violations, layout_of, read_layers, reason
from nxm_lightning.sparsity.onnx_format import verify_onnx
from nxm_lightning.sparsity.targets import Target, select_targets

# How many unlisted default targets the failure line names before it only counts them.
NAMED_UNLISTED = 3


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``save_pretrained`` folder; raises VerifyError when there are none or a file is unreadable."""
    files = sorted(directory.glob("*.safetensors"))
    if files:
        from safetensors import SafetensorError  # a transformers dependency: only needed for .safetensors files
        from safetensors.torch import load_file

        weights: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                weights.update(load_file(str(file)))
            except (SafetensorError, OSError) as err:
                raise VerifyError(f"{file} is truncated or corrupt ({reason(err)}): export the model again.") from None
        return weights
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
            raise VerifyError(f"{binary} is truncated or corrupt ({reason(err)}): export the model again.") from None
    raise VerifyError(f"No weights in {directory}: expected *.safetensors or pytorch_model.bin (save_pretrained output).")


def verify(directory: str | Path) -> list[str]:
    """The violations found (empty when compliant); raises VerifyError when the folder (or .onnx file) cannot be checked."""
    directory = Path(directory)
    if directory.suffix == ".onnx" and directory.is_file():
        return verify_onnx(directory)
    if not directory.is_dir():
        raise VerifyError(
            f"{directory} is not a directory nor an .onnx file. Pass the export_dir written by HardPruneCallback or "
            "an ONNX file written by python -m nxm_lightning.sparsity.onnx_export."
        )
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise VerifyError(f"{manifest_path} not found: this folder was not exported by nxm-lightning (no manifest).")
    layers = read_layers(manifest_path.read_bytes(), str(manifest_path))
    weights = load_weights(directory)
    missing = [f"layer {name!r} is listed in {MANIFEST} but missing from the weights" for name in layers if name not in weights]
    return missing + layer_violations(layers, weights) + unlisted_targets(directory, layers, weights)


def default_targets(directory: Path, patterns: set[str]) -> list[Target]:
    """The default targets of the folder's model (built on the meta device from ``config.json``) under every pattern.

    A layer whose width is not a multiple of some pattern's M is left out (the selection skips it, so an export may
    rightly leave it dense); the targets carry the first pattern (in sorted order).
    """
    try:
        config, model_class = pretrained_class(directory)
    except (ImportError, OSError, ValueError) as err:  # no transformers, no or a bad config.json
        raise VerifyError(f"Cannot build the model of {directory} to find its default targets ({reason(err)}).") from None
    with torch.device("meta"):
        model = model_class(config)
    selections = []
    for pattern in sorted(patterns):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the layers skipped for their width: expected here
            try:
                selections.append(select_targets(model, pattern))
            except ValueError:  # no default target at all under this pattern
                return []
    common = set.intersection(*({t.name for t in targets} for targets in selections))
    return [t for t in selections[0] if t.name in common]


def unlisted_targets(directory: Path, layers: dict[str, dict], weights: dict[str, torch.Tensor]) -> list[str]:
    """One problem naming the default targets of the folder's model that the manifest does not list (none: empty).

    Each of them is checked too, so the line says whether only the manifest or also the weights changed.
    """
    targets = default_targets(directory, {entry["pattern"] for entry in layers.values()} or {"2:4"})
    unlisted = [t for t in targets if f"{t.name}.weight" not in layers]
    if not unlisted:
        return []
    names = [f"{t.name}.weight" for t in unlisted]
    entries = {name: {"pattern": str(t.pattern), "layout": layout_of(t.transposed)} for t, name in zip(unlisted, names)}
    broken = len(layer_violations(entries, weights))
    shown = ", ".join(repr(name) for name in names[:NAMED_UNLISTED])
    more = f" and {len(names) - NAMED_UNLISTED} more" if len(names) > NAMED_UNLISTED else ""
    return [
        f"{MANIFEST} does not list {len(names)} of the model's {len(targets)} default target layers ({broken} of them "
        f"not {unlisted[0].pattern} in the weights): {shown}{more}. Every Linear inside the transformer blocks must be "
        "listed and N:M; export again with HardPruneCallback"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nxm_lightning.sparsity.verify", description=__doc__.splitlines()[0])
    parser.add_argument(
        "directory",
        help="an export folder holding sparsity.json and the weights, or an .onnx file from nxm_lightning.sparsity.onnx_export",
    )
    args = parser.parse_args(argv)
    try:
        problems = verify(args.directory)
    except VerifyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if problems:
        for problem in problems:
            print(f"VIOLATION: {problem}", file=sys.stderr)
        return 1
    where = args.directory if args.directory.endswith(".onnx") else Path(args.directory) / MANIFEST
    print(f"OK: every layer in {where} satisfies its N:M pattern.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
