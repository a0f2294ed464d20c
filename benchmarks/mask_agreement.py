"""How far each sparse method's 2:4 mask is from magnitude's: the share of the weights a study run's export keeps that
the magnitude 2:4 mask of its dense start (what asp keeps) keeps too.

    python benchmarks/mask_agreement.py --work-dir ~/nxm-study    # after (or while) glue_study.py runs

Reads the exports in the study's work dir (not committed), so it measures the runs whose exports are still there and
keeps the entries of earlier ones in ``benchmarks/records/mask_agreement.json`` (committed; ``study_report.py``
tabulates it). Two 2:4 masks drawn at random agree on half the kept weights; asp agrees with itself on all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from glue_study import RECORDS, environment, write_record
from study_report import AGREEMENT, chosen_runs, load_records

from nxm_lightning.sparsity.export import MANIFEST, as_out_in
from nxm_lightning.sparsity.nxm import NxMPattern, nxm_mask
from nxm_lightning.sparsity.verify import load_weights


def kept_share(sparse_dir: Path, dense_dir: Path) -> float:
    """The share of the weights kept in the export ``sparse_dir`` that the magnitude N:M mask of ``dense_dir`` keeps,
    over every layer its ``sparsity.json`` lists."""
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


def measure(work_dir: Path, records_dir: Path, known: dict) -> dict:
    """``known`` with an entry for every chosen sparse run of the study whose export and dense start are in ``work_dir``."""
    records = load_records(records_dir)
    runs = dict(known)
    for budget in ("paper", "short"):
        chosen = [spec for spec, _ in chosen_runs(records, budget)]
        dense = {spec.task: spec for spec in chosen if spec.budget is None}
        for spec in chosen:
            if spec.budget is None or spec.name in runs or spec.task not in dense:
                continue
            sparse_dir, dense_dir = work_dir / "exports" / spec.name, work_dir / "exports" / dense[spec.task].name
            if not (sparse_dir / MANIFEST).is_file() or not dense_dir.is_dir():
                continue
            share = kept_share(sparse_dir, dense_dir)
            runs[spec.name] = {"method": spec.method, "budget": spec.budget, "task": spec.task, "seed": spec.seed,
                               "dense": dense[spec.task].name, "kept_share_of_magnitude_mask": share}  # fmt: skip
            print(f"{spec.name}: {share:.4f}")
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/results/study"), help="the study's work dir")
    parser.add_argument("--records", type=Path, default=RECORDS, help="the study's records")
    parser.add_argument("--out", type=Path, default=AGREEMENT)
    args = parser.parse_args(argv)
    if not (args.work_dir / "exports").is_dir():
        sys.exit(f"No exports under {args.work_dir}: pass the study's --work-dir (where glue_study.py run wrote them).")
    known = json.loads(args.out.read_text())["runs"] if args.out.is_file() else {}
    runs = measure(args.work_dir, args.records, known)
    write_record(args.out, {"command": "python benchmarks/mask_agreement.py", "environment": environment(), "runs": runs})
    print(f"wrote {args.out}: {len(runs)} runs ({len(runs) - len(known)} new)")


if __name__ == "__main__":
    main()
