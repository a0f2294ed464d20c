"""The exploration driver beside the study (benchmarks/study_explore.py): its plan, its records and its report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import write_stsb
from study_helpers import finish, finish_grid_and_sweep

from benchmarks import study_explore
from benchmarks.study.plan import ADMM_CALLBACK, HARD_PRUNE_CALLBACK, SRSTE_CALLBACK, RunSpec, Study, Waiting, run_fingerprint
from benchmarks.study.records import make_record


def explored(tmp_path: Path) -> study_explore.Exploration:
    """An exploration of nxm_gentle on STS-B, seeds 42 and 43, beside a study whose grid and sweep have finished (dense
    lr 1e-4 best; asp and nxm best at 1e-4)."""
    study = Study(tmp_path / "study", "../shared/data/glue", tasks=("stsb",), records_dir=tmp_path / "study_records")
    finish_grid_and_sweep(study)
    return study_explore.Exploration(tmp_path / "work", "../shared/data/glue", tasks=("stsb",), seeds=(42, 43),
                                     records_dir=tmp_path / "records", variants=("nxm_gentle",),
                                     study_records=tmp_path / "study_records")  # fmt: skip


def test_an_exploration_trains_the_studys_best_dense_run_then_each_seeds_pair_then_the_other_partners(
    tmp_path: Path,
) -> None:
    exploration = explored(tmp_path)
    plan = list(exploration.runs())
    dense = plan[0]
    assert isinstance(dense, RunSpec) and (dense.method, dense.learning_rate, dense.seed) == ("dense", 1e-4, 42)
    assert dense.record_path.parent == tmp_path / "records" and dense.export_dir.parent == tmp_path / "work" / "exports"
    assert all(isinstance(item, Waiting) for item in plan[1:])  # its own dense run, not the study's export
    finish(exploration, dense, 85.5)
    runs = [item for item in exploration.runs() if isinstance(item, RunSpec) and item.budget == "paper"]
    assert [run.name for run in runs] == [
        "asp_paper_lr0.0001_stsb_s42", "nxm_gentle_paper_lr0.0001_stsb_s42",
        "asp_paper_lr0.0001_stsb_s43", "nxm_gentle_paper_lr0.0001_stsb_s43",
        "nxm_paper_lr0.0001_stsb_s42", "nxm_paper_lr0.0001_stsb_s43",
    ]  # fmt: skip
    assert all(run.model == str(dense.export_dir) and run.record_path.parent == tmp_path / "records" for run in runs)
    gentle, nxm = runs[1], runs[4]
    assert gentle.method == "nxm" and gentle.variant == "nxm_gentle"
    admm = ADMM_CALLBACK
    assert gentle.callback_args[admm] == {**nxm.callback_args.get(admm, {}), "rho": 0.002, "rho_max": 0.05}
    config = yaml.safe_load(gentle.edited_config()[0])
    args = next(c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"] == admm)
    assert (args["rho"], args["rho_max"]) == (0.002, 0.05)
    assert run_fingerprint(gentle) != run_fingerprint(nxm)


def test_a_variants_record_names_its_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("benchmarks.study.records.run_metrics", lambda run_dir: {"best_score": 80.0})
    spec = RunSpec("nxm", "stsb", 42, 10, 1e-4, tmp_path, "glue", "paper", variant="nxm_gentle")
    record = make_record(spec, ["python", "cli.py"], 1.0, 1.0, {})
    assert (record["name"], record["method"], record["variant"]) == ("nxm_gentle_paper_lr0.0001_stsb_s42", "nxm", "nxm_gentle")
    assert "variant" not in make_record(RunSpec("nxm", "stsb", 42, 10, 1e-4, tmp_path, "glue", "paper"),
                                                   ["python"], 1.0, 1.0, {})  # fmt: skip


def test_the_report_pairs_the_variant_with_each_partner_seed_by_seed(tmp_path: Path) -> None:
    exploration = explored(tmp_path)
    records = [finish(exploration, next(exploration.runs()), 85.5)]
    scores = {
        "asp_paper_lr0.0001_stsb_s42": 80.0,
        "nxm_gentle_paper_lr0.0001_stsb_s42": 82.0,
        "asp_paper_lr0.0001_stsb_s43": 81.0,
        "nxm_gentle_paper_lr0.0001_stsb_s43": 82.0,
        "nxm_paper_lr0.0001_stsb_s42": 79.0,
    }  # nxm s43 has not finished
    for run in exploration.runs():
        if isinstance(run, RunSpec) and run.name in scores:
            record = finish(exploration, run, scores[run.name])
            record.update(variant=run.variant, dense_start_score=85.5)
            cut = {"prune_step": 1340 if run.method == "nxm" else 0, "prune_score_before": 70.0}
            record["metrics"].update(cut, prune_score_after=75.0 if run.variant else 60.0)
            records.append(record)
    early = study_explore.report_lines("nxm_gentle", records[:2])  # the dense run and asp s42 only
    assert [line for line in early if line.startswith("| STS-B")][1].endswith("(cut at step 0) | - | - |")
    collapsed = {**records[1], "metrics": {**records[1]["metrics"], "prune_score_after": 0.0}}  # an MCC of 0 is a score
    assert "| 70.0 → 0.0 → 80.0 (cut at step 0) |" in study_explore.report_lines("nxm_gentle", [records[0], collapsed])[-1]
    lines = study_explore.report_lines("nxm_gentle", records)
    row = next(line for line in lines if line.startswith("| STS-B"))
    assert "s42: 80.00; 79.00, s43: 81.00; 80.00" in row  # asp: best; last epoch
    assert row.endswith("| +1.5 ± 0.7 (n=2) | +3.0 (n=1) |")  # gentle - asp over both seeds, gentle - nxm over s42
    cut = [line for line in lines if line.startswith("| STS-B")][1]
    assert cut == (
        "| STS-B (Pearson/Spearman) | 70.0 → 60.0 → 80.5 (cut at step 0) | 70.0 → 60.0 → 79.0 (cut at step 1340) "
        "| 70.0 → 75.0 → 82.0 (cut at step 1340) |"
    )


def test_feature_kd_variants_share_a_family_and_carry_their_loss_into_the_config(tmp_path: Path) -> None:
    study = Study(tmp_path / "study", "../shared/data/glue", tasks=("stsb",), records_dir=tmp_path / "study_records")
    finish_grid_and_sweep(study)
    exploration = study_explore.Exploration(
        tmp_path / "work", "../shared/data/glue", tasks=("stsb",), seeds=(42,), records_dir=tmp_path / "records",
        variants=("asp_last", "nxm_last"), budget="short", study_records=tmp_path / "study_records",
    )  # fmt: skip
    finish(exploration, next(exploration.runs()), 85.5)
    runs = [item for item in exploration.runs() if isinstance(item, RunSpec) and item.budget == "short"]
    # Each variant after its first partner; asp_last is nxm_last's first partner, so it runs once. asp's short budget
    # has a fixed learning rate (2e-4); the others take their sweep's (1e-4 here).
    assert [run.name for run in runs] == [
        "asp_short_lr0.0002_stsb_s42", "asp_last_short_lr0.0001_stsb_s42", "nxm_last_short_lr0.0001_stsb_s42",
        "asp_kd_short_lr0.0001_stsb_s42", "nxm_kd_short_lr0.0001_stsb_s42",
    ]  # fmt: skip
    asp_last, nxm_last = runs[1], runs[2]
    assert (asp_last.method, nxm_last.method) == ("asp_kd", "nxm_kd") and asp_last.teacher and not asp_last.model
    for run in (asp_last, nxm_last):
        model = yaml.safe_load(run.edited_config()[0])["model"]["init_args"]
        assert (model["alpha"], model["logit_weight"], model["hidden_weight"]) == (0.0, 0.0, 2.0)
        assert (model["hidden_layers"], model["cache_teacher_logits"]) == ("last", False)
    assert run_fingerprint(asp_last) != run_fingerprint(runs[3])
    assert study_explore.family("asp_sqh5") == study_explore.family("nxm_fdall") == "feature_kd"
    with pytest.raises(SystemExit, match="one family at a time"):
        study_explore.Exploration(tmp_path / "w", "glue", variants=("asp_last", "nxm_gentle"))


def fake_record(kind: str, task: str, seed: int, best: float, budget: str | None = "paper") -> dict:
    method = study_explore.VARIANTS[kind].method if kind in study_explore.VARIANTS else kind
    return {"name": f"{kind}_{task}_s{seed}", "method": method, "variant": kind if kind != method else None,
            "budget": budget, "task": task, "seed": seed, "dense_start_score": 80.0, "wall_s": 60.0,
            "precision": "bf16-mixed", "environment": {"machine": "x86_64, 2 CPUs, Some CPU"},
            "metrics": {"best_score": best, "best_step": 10, "final_score": best, "val_scores": [(10, best)]}}  # fmt: skip


def test_the_family_results_give_differences_from_dense_pairs_and_goals(tmp_path: Path) -> None:
    records = [fake_record("dense", task, 42, 80.0, budget=None) for task in study_explore.TASKS]
    for task in study_explore.TASKS:
        for seed, shift in ((42, 0.0), (43, 1.0)):
            records += [fake_record("asp_sqh1", task, seed, 79.0 + shift), fake_record("nxm_sqh1", task, seed, 80.0 + shift)]
    records.append(fake_record("asp", "stsb", 42, 77.0))
    lines = study_explore.family_section("feature_kd", records, tmp_path)
    row = next(line for line in lines if line.startswith("| asp_sqh1 |"))
    assert row == "| asp_sqh1 | -0.5 ± 0.7 (n=2) | -0.5 ± 0.7 (n=2) | -0.5 ± 0.7 (n=2) | -0.5 ± 0.7 (n=2) | -0.50 |"
    assert next(line for line in lines if line.startswith("| asp |")).endswith("| -3.0 (n=1) | - | - |")
    assert (
        next(line for line in lines if line.startswith("| sqh1 |")) == "| sqh1 | +1.0 ± 0.0 (n=2) |" + " +1.0 ± 0.0 (n=2) |" * 3
    )
    assert "- best 2:4 run >= dense -0.5: met (nxm_sqh1: +0.50)" in lines
    assert "- nxm_sqh1 >= asp_sqh1 + 0.5: met (+1.00)" in lines
    assert (tmp_path / "feature_kd_paper.png").stat().st_size > 0 and not (tmp_path / "feature_kd_short.png").exists()
    assert (tmp_path / "feature_kd_paper_curves.png").stat().st_size > 0
    assert lines[0] == "<!-- feature_kd:begin -->" and lines[-1] == "<!-- feature_kd:end -->"


def test_a_shorter_admm_phase_gets_its_own_z_step_interval(tmp_path: Path) -> None:
    """nxm_<x>_admm30 ends ADMM by 30% of training; the Z-step interval is recomputed for that phase (RTE at the
    paper budget: 78 steps an epoch, so 234 steps for at least 20 Z-steps: every 11 steps, not the 50% phase's 19)."""
    study = Study(tmp_path / "study", "../shared/data/glue", tasks=("stsb", "rte"), records_dir=tmp_path / "study_records")
    finish_grid_and_sweep(study)
    exploration = study_explore.Exploration(tmp_path / "work", "../shared/data/glue", tasks=("rte",), seeds=(42,),
                                            records_dir=tmp_path / "records", variants=("nxm_sqh1_admm30",),
                                            study_records=tmp_path / "study_records")  # fmt: skip
    finish(exploration, next(exploration.runs()), 60.0)
    runs = {run.variant or run.method: run for run in exploration.runs() if isinstance(run, RunSpec) and run.budget}
    short, full = (
        runs["nxm_sqh1_admm30"].callback_args[ADMM_CALLBACK],
        runs["nxm_sqh1"].callback_args[ADMM_CALLBACK],
    )
    assert short == {"end_fraction": 0.3, "update_every": 11} and full == {"update_every": 19}


def test_the_family_results_show_where_the_points_go_and_whether_features_reach_the_teachers(tmp_path: Path) -> None:
    def cut(kind: str, seed: int, before: float, after: float, best: float, hidden: list | None = None) -> dict:
        record = fake_record(kind, "rte", seed, best)
        record["metrics"].update(prune_score_before=before, prune_score_after=after, prune_step=100)
        record["metrics"]["curves"] = {"train/hidden_loss": hidden} if hidden else {}
        return record

    # The hidden loss's ADMM-phase logs (before step 100) are not the student after its cut; the last tenth of 20 logs
    # after it is their last 2.
    after_cut = [(100 + 10 * i, 0.5 - 0.01 * i) for i in range(20)]
    records = [
        cut("asp_sqh1", 42, 80.0, 60.0, 77.0),
        cut("asp_sqh1", 43, 80.0, 62.0, 78.0),
        cut("nxm_sqh1", 42, 77.5, 77.0, 78.5, [(50, 0.9), *after_cut]),
    ]
    lines = study_explore.family_section("feature_kd", records, tmp_path)
    points = [line for line in lines if line.startswith("| asp_sqh1 |") or line.startswith("| nxm_sqh1 |")]
    assert points[2] == "| asp_sqh1 | - | - | - | +0.0 → -19.0 → -2.5 |"
    assert points[3] == "| nxm_sqh1 | - | - | - | -2.5 → -3.0 → -1.5 |"
    hidden = [line for line in lines if line.startswith("| nxm_sqh1 |")][-1]
    assert hidden == "| nxm_sqh1 | - | - | - | 0.500 → 0.315 |"
    # asp_sqh1 recorded no hidden curve: a row in the difference and points tables only
    assert [line.startswith("| asp_sqh1 |") for line in lines].count(True) == 2


def test_a_pair_needs_one_dense_start_and_asp_fisher_recipes_cut_by_fisher(tmp_path: Path) -> None:
    records = [fake_record("asp_sqh1", "rte", seed, 78.0) for seed in (42, 43)]
    records += [fake_record("nxm_sqh1", "rte", seed, 79.0) for seed in (42, 43)]
    records[3]["dense_start_score"] = 81.0  # seed 43's nxm run started from a dense model rebuilt elsewhere
    lines = study_explore.family_section("feature_kd", records, tmp_path)
    assert next(line for line in lines if line.startswith("| sqh1 |")) == "| sqh1 | - | - | - | +1.0 (n=1) |"
    assert next(line for line in lines if line.startswith("| nxm_sqh1 |")) == "| nxm_sqh1 | - | - | - | -1.5 ± 0.7 (n=2) | - |"

    study = Study(tmp_path / "study", "../shared/data/glue", tasks=("stsb",), records_dir=tmp_path / "study_records")
    finish_grid_and_sweep(study)
    exploration = study_explore.Exploration(
        tmp_path / "work", "../shared/data/glue", tasks=("stsb",), seeds=(42,), records_dir=tmp_path / "records",
        variants=("asp_fisher_sqh1",), budget="short", study_records=tmp_path / "study_records",
    )  # fmt: skip
    finish(exploration, next(exploration.runs()), 85.5)  # the dense teacher
    run = exploration.method_spec("asp_fisher_sqh1", "stsb", 42)
    config = yaml.safe_load(run.edited_config()[0])
    prune = next(cb["init_args"] for cb in config["trainer"]["callbacks"] if cb["class_path"] == HARD_PRUNE_CALLBACK)
    assert (prune["at_step"], prune["saliency"]) == (32, "fisher")
    assert config["model"]["init_args"]["hidden_weight"] == 1.0 and run.teacher


def test_srste_recipes_add_the_callback_and_cut_at_their_share_of_the_run(tmp_path: Path) -> None:
    glue = write_stsb(tmp_path / "glue", ["1.0"] * 100)  # 100 examples: 4 optimizer steps an epoch at batch 32
    study = Study(tmp_path / "study", str(glue), tasks=("stsb",), records_dir=tmp_path / "study_records")
    finish_grid_and_sweep(study)
    exploration = study_explore.Exploration(
        tmp_path / "work", str(glue), tasks=("stsb",), seeds=(42,), records_dir=tmp_path / "records",
        variants=("srste_sqh1",), budget="paper", study_records=tmp_path / "study_records",
    )  # fmt: skip
    finish(exploration, next(exploration.runs()), 85.5)  # the dense teacher
    run = exploration.method_spec("srste_sqh1", "stsb", 42)
    callbacks = yaml.safe_load(run.edited_config()[0])["trainer"]["callbacks"]
    assert callbacks[0] == {"class_path": SRSTE_CALLBACK, "init_args": study_explore.SRSTE}
    prune = next(cb["init_args"] for cb in callbacks if cb["class_path"] == HARD_PRUNE_CALLBACK)
    assert prune["at_step"] == 30  # 75% of 10 epochs x 4 steps
    assert run.edited_config()[1][SRSTE_CALLBACK] == study_explore.SRSTE  # recorded among the run's edits
    # its partner, asp_sqh1, has neither
    partner = yaml.safe_load(exploration.method_spec("asp_sqh1", "stsb", 42).edited_config()[0])["trainer"]["callbacks"]
    assert [cb["class_path"] for cb in partner] == [HARD_PRUNE_CALLBACK]
    assert "at_step" not in partner[0]["init_args"]


def test_pairs_only_plans_each_variant_and_its_first_partner_alone(tmp_path: Path) -> None:
    exploration = explored(tmp_path)
    finish(exploration, next(exploration.runs()), 85.5)
    exploration.pairs_only = True
    runs = [item.name for item in exploration.runs() if isinstance(item, RunSpec) and item.budget == "paper"]
    # nxm_gentle's other partner, nxm, is left out
    assert runs == [
        "asp_paper_lr0.0001_stsb_s42", "nxm_gentle_paper_lr0.0001_stsb_s42",
        "asp_paper_lr0.0001_stsb_s43", "nxm_gentle_paper_lr0.0001_stsb_s43",
    ]  # fmt: skip


def test_the_command_line_takes_pairs_only_for_run_and_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(study_explore, "print_plan", lambda exploration: seen.append(exploration.pairs_only))
    study_explore.main(["plan", "nxm_sqh1", "--pairs-only", "--tasks", "stsb"])
    study_explore.main(["plan", "nxm_sqh1", "--tasks", "stsb"])
    assert seen == [True, False]
