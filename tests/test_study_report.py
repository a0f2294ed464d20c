"""The study's report (benchmarks/study/report.py): the chosen runs, the pairs and goals, the tables and plots."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from study_helpers import report_records

from benchmarks.study import report


def test_the_report_takes_the_chosen_runs_pairs_them_by_seed_and_checks_the_goals(tmp_path: Path) -> None:
    records = report_records(tmp_path)
    cells = report.study_cells(records, "paper")
    assert cells[("dense", "rte")] == {42: 82.0, 43: 82.0}  # the grid's best: every seed's start
    assert cells[("asp", "stsb")] == {42: 79.0, 43: 77.0}  # lr 5e-5: the sweep's 78.0 at 1e-4 is not a study run
    assert cells[("nxm", "stsb")] == {42: 81.0, 43: 80.0}
    assert cells[("asp", "rte")] == {42: 79.0, 43: 77.0}
    final = report.study_cells(records, "paper", at="final_score")
    assert final[("asp", "rte")] == {42: 78.0, 43: 76.0} and final[("dense", "rte")][42] == 82.0  # dense: its export
    paired = "\n".join(report.paired_lines(cells, "paper"))
    assert "| nxm - asp | +2.5 ± 0.7 (n=2) |" in paired and "| nxm_kd - asp_kd | +1.5 ± 0.0 (n=2) |" in paired
    assert report.goal_lines(cells) == [
        "- nxm >= asp + 1.0 on the 4-task average: nxm 80.5 - asp 78.0 = +2.5: **met**, provisional (seeds 42, 43 of "
        "the 3 planned).",
        "- nxm_kd >= asp_kd + 0.5 on the 4-task average: nxm_kd 81.0 - asp_kd 79.5 = +1.5: **met**, provisional "
        "(seeds 42, 43 of the 3 planned).",
        "- nxm_kd >= dense - 1.0 on the 4-task average: nxm_kd 81.0 - dense 82.0 = -1.0: **met**, provisional "
        "(seeds 42, 43 of the 3 planned).",
    ]
    for task in report.TASKS:  # the third seed on all four tasks: the verdict is final
        for method, offset in (("nxm", 1.0), ("asp", -1.0)):
            cells[(method, task)][44] = statistics.mean(cells[(method, task)].values()) + offset
    assert report.goal_lines(cells)[0] == (
        "- nxm >= asp + 1.0 on the 4-task average: nxm 80.8 - asp 77.7 = +3.2: **met** (seeds 42, 43, 44 of the 3 planned)."
    )
    assert [report.signed(d) for d in (-0.04, -0.06, 0.0)] == ["+0.0", "-0.1", "+0.0"]  # no "-0.0"
    for record in records:  # seed 43's RTE runs started from a dense export rebuilt on another machine
        if record["task"] == "rte" and record["seed"] == 43 and record["budget"]:
            record["dense_start_score"] = 83.0 if record["method"] == "asp" else 84.0
        if record["task"] == "rte" and record["method"] == "nxm_paper":  # one seed only: not a start the others share
            record["dense_start_score"] = 99.0
    starts = report.study_cells(records, "paper")[("dense", "rte")]
    assert starts == {42: 82.0, 43: pytest.approx((83.0 + 4 * 84.0) / 5)}  # asp's start and the other four methods'
    # nxm and asp of seed 43 started from different builds: the note says so; nxm_kd and asp_kd share theirs
    assert report.split_pairs_note(records, "paper")[0].endswith(
        "difference above includes theirs): RTE seed 43: nxm - asp (84.00 vs 83.00)."
    )
    for record in records:
        record.pop("dense_start_score", None)
    assert report.split_pairs_note(records, "paper") == []
    del cells[("nxm_kd", "cola")]
    assert report.goal_lines(cells)[1].endswith("**not yet measured** (both finished on: SST-2, STS-B, RTE).")


def test_the_cut_table_follows_each_chosen_run_from_before_its_cut_to_its_best(tmp_path: Path) -> None:
    records = report_records(tmp_path)
    for record in records:
        if record["method"] == "asp" and record["task"] == "rte":
            record["metrics"] |= {"prune_score_before": 82.0, "prune_score_after": 60.0 + record["seed"] - 42}
        if record["method"] == "nxm" and record["task"] == "cola" and record["seed"] == 42:
            record["metrics"] |= {"prune_score_before": 70.0, "prune_score_after": 71.0}
    rows = {line.split(" | ")[0].removeprefix("| "): line.strip("| ").split(" | ")[1:] for line in
            report.cut_table(records, "paper")[2:]}  # fmt: skip
    columns = list(report.TASKS)
    assert rows["asp"][columns.index("rte")] == "82.0 → 60.5 → 78.0 (n=2)"  # best: seed 42's 79.0 and 43's 77.0
    assert rows["nxm"][columns.index("cola")] == "70.0 → 71.0 → 81.0"
    assert rows["asp"][columns.index("cola")] == rows["asp_kd"][columns.index("rte")] == "-"  # no cut recorded


def test_the_agreement_table_tabulates_the_kept_share_of_the_chosen_runs(tmp_path: Path) -> None:
    records = report_records(tmp_path)
    assert report.agreement_table(records, "paper") == []  # no run measured yet: no table
    for record in records:
        if record["method"] == "nxm" and record["task"] == "rte":
            record["kept_share_of_magnitude_mask"] = 0.75 if record["seed"] == 42 else 0.85
        if record["method"] == "nxm" and record["task"] == "stsb" and record["learning_rate"] == 5e-5:
            record["kept_share_of_magnitude_mask"] = 0.1  # a sweep run the study did not choose: not tabulated
    rows = {line.split(" | ")[0].removeprefix("| "): line.strip("| ").split(" | ")[1:]
            for line in report.agreement_table(records, "paper")[2:]}  # fmt: skip
    assert rows["nxm"][list(report.TASKS).index("rte")] == "80.0% (n=2)"
    assert rows["nxm"][list(report.TASKS).index("stsb")] == "-" and rows["asp"] == ["-"] * 4


def test_the_curves_plot_takes_the_first_seeds_chosen_runs_of_each_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = report_records(tmp_path)
    assert not report.plot_dev_curves(records, tmp_path / "curves.png")  # no evaluations recorded
    for record in records:
        record["metrics"]["val_scores"] = [[9, 70.0], [19, record["metrics"]["best_score"]]]
    plotted: dict[object, list[str]] = {}

    def spy(ax, x, y, style, **kwargs):  # noqa: ANN001, ANN202
        plotted.setdefault(ax, []).append(kwargs.get("label", "cut"))

    monkeypatch.setattr("matplotlib.axes.Axes.plot", spy)
    assert report.plot_dev_curves(records, tmp_path / "curves.png") and (tmp_path / "curves.png").exists()
    plotted = {ax.get_title().split(",")[0]: labels for ax, labels in plotted.items()}
    assert set(plotted) == {"CoLA (MCC)", "SST-2 (acc)", "STS-B (Pearson/Spearman)", "RTE (acc)"}
    # One line per method (seed 42 at its chosen rate: not the sweep's other points, not seed 43), no cut recorded.
    assert sorted(plotted["STS-B (Pearson/Spearman)"]) == ["asp", "asp_fisher", "asp_kd", "nxm", "nxm_kd", "nxm_paper"]


def test_report_rewrites_only_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    page = "# Results\n\nhand-written intro\n\n{begin}\n{table}\n{end}\n\nanalysis\n"
    results.write_text(page.format(begin=report.BEGIN, table="old table", end=report.END))
    report.write_results(results, [report.BEGIN, "new table", report.END])
    assert results.read_text() == page.format(begin=report.BEGIN, table="new table", end=report.END)


def test_the_machine_list_has_one_line_per_machine_whatever_the_commits(tmp_path: Path) -> None:
    amd = {"packages": {"torch": "2.13.0+cpu"}, "python": "3.11.7", "machine": "x86_64, 2 CPUs, AMD EPYC",
           "accelerator": "none (CPU)"}  # fmt: skip
    records = [
        {"environment": amd | {"git_commit": "a" * 40, "git_dirty": False}},
        {"environment": amd | {"git_commit": "b" * 40, "git_dirty": True}},
        {"environment": amd | {"cpu_native_bf16": True, "git_commit": "b" * 40, "git_dirty": False}},
    ]
    lines = report.environment_lines(records)
    assert sorted(line.split(";")[0] for line in lines[:-1]) == ["- x86_64, 2 CPUs, AMD EPYC",
                                                                 "- x86_64, 2 CPUs, AMD EPYC (native bf16)"]  # fmt: skip
    assert lines[-1] == f"- commits: {'a' * 10}, {'b' * 10}, {'b' * 10} (+ local changes)"
