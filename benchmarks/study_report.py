"""Regenerate the study part of ``docs/RESULTS.md`` and its plots from the committed records of ``glue_study.py``.

    python -m benchmarks.study_report

Rewrites the text between the ``<!-- study_report:begin -->`` and ``<!-- study_report:end -->`` markers of
``docs/RESULTS.md`` (creating the file when it has none) and keeps everything outside them, the hand-written analysis.
Writes ``docs/study_scores.png`` (dev score per method and task, both budgets, with the seed spread) and
``docs/study_admm.png`` (the ADMM curves of one nxm and the nxm_paper run per task, from the curves stored in the
records) and ``docs/study_curves.png`` (the dev score after every epoch of each method's first-seed run, per task).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks._help import described_parser
from benchmarks.study.plan import RECORDS, REPO
from benchmarks.study.records import load_records
from benchmarks.study.report import generated_section, write_results


def main(argv: list[str] | None = None) -> None:
    parser = described_parser(__doc__)
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "RESULTS.md")
    args = parser.parse_args(argv)
    records = load_records(args.records)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    section = generated_section(records, args.results.parent)
    write_results(args.results, section)
    print(f"wrote {args.results} from {len(records)} records")


if __name__ == "__main__":
    main()
