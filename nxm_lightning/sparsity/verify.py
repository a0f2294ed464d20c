"""Check N:M compliance of an exported model folder or ONNX file: ``python -m nxm_lightning.sparsity.verify DIR_OR_ONNX``.

Exit status 0: every layer listed in ``sparsity.json`` (or, for an ``.onnx`` file, in the sparsity record that
:mod:`nxm_lightning.sparsity.onnx_export` embeds) satisfies its pattern; 1: a violation (the layer and its first bad group are
printed); 2: the path is not an nxm-lightning export.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from nxm_lightning.sparsity.export import MANIFEST, as_out_in, describe_violation
from nxm_lightning.sparsity.nxm import NxMPattern, first_violation


class VerifyError(Exception):
    """The folder cannot be verified (missing or unreadable files)."""


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file  # a transformers dependency: only needed for .safetensors files

        weights: dict[str, torch.Tensor] = {}
        for file in files:
            weights.update(load_file(str(file)))
        return weights
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise VerifyError(f"No weights in {directory}: expected *.safetensors or pytorch_model.bin (save_pretrained output).")


def verify(directory: str | Path) -> list[str]:
    """The violations found (empty when compliant); raises VerifyError when the folder (or .onnx file) cannot be checked."""
    directory = Path(directory)
    if directory.suffix == ".onnx" and directory.is_file():
        from nxm_lightning.sparsity.onnx_export import verify_onnx  # onnx is an optional extra

        return verify_onnx(directory)
    if not directory.is_dir():
        raise VerifyError(
            f"{directory} is not a directory nor an .onnx file. Pass the export_dir written by HardPruneCallback or "
            "an ONNX file written by python -m nxm_lightning.sparsity.onnx_export."
        )
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise VerifyError(f"{manifest_path} not found: this folder was not exported by nxm-lightning (no manifest).")
    try:
        layers = json.loads(manifest_path.read_text())["layers"]
    except (json.JSONDecodeError, KeyError) as err:
        raise VerifyError(f"{manifest_path} is not a valid manifest ({err}).") from None
    weights = load_weights(directory)
    missing = [f"layer {name!r} is listed in {MANIFEST} but missing from the weights" for name in layers if name not in weights]
    return missing + layer_violations(layers, weights)


def layer_violations(layers: dict[str, dict], weights: dict[str, torch.Tensor]) -> list[str]:
    """The violations of ``weights`` against manifest entries ``{name: {"pattern", "layout"}}`` (names present only).

    ``layout`` is ``out_in`` (the default, for manifests written before it existed) or ``in_out`` (stored transposed).
    """
    problems = []
    for name, entry in layers.items():
        if name not in weights:
            continue
        pattern = NxMPattern.parse(entry["pattern"])
        layout = entry.get("layout", "out_in")
        violation = first_violation(as_out_in(weights[name], layout), pattern.n, pattern.m)
        if violation is not None:
            problems.append(describe_violation(name, pattern, violation, layout))
    return problems


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
