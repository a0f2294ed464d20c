"""The command line end to end: LightningCLI fit/validate/test/predict with the configs in configs/."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_checkpoints_finite, write_stsb

import cli
from nxm_lightning.sparsity.nxm import is_nxm
from nxm_lightning.sparsity.verify import verify
from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.module import SequenceClassificationModule

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> cli.NxMLightningCLI:
    return cli.main(list(args))


def common_args(tmp_path: Path, glue_dir: Path, model: str, task: str = "stsb") -> list[str]:
    return [
        f"--model.init_args.model_name_or_path={model}", f"--data.task_name={task}", f"--data.data_dir={glue_dir}",
        "--data.max_train_samples=32", "--data.max_eval_samples=32", "--data.max_seq_length=32", "--data.batch_size=8",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
    ]  # fmt: skip


def test_help_and_config_lookup(capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run([sys.executable, "cli.py", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and all(cmd in result.stdout for cmd in ("fit", "validate", "test", "predict"))
    assert cli.resolve_config_paths(["fit", "--config", "glue_dense.yaml"])[2] == str(cli.CONFIG_DIR / "glue_dense.yaml")
    with pytest.raises(SystemExit, match="Available configs: .*glue.yaml"):
        cli.resolve_config_paths(["fit", "--config=nope.yaml"])


@pytest.mark.parametrize("config", sorted(p.name for p in cli.CONFIG_DIR.glob("*.yaml")))
def test_configs_parse_through_the_cli_parser(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    with pytest.raises(SystemExit) as parsed:  # --print_config: the parser checks every key and type, then exits
        cli.main(["fit", "--config", config, "--print_config"])
    assert parsed.value.code in (0, None), capsys.readouterr().err
    assert "class_path: nxm_lightning." in capsys.readouterr().out
    # The same file with one callback argument misspelt must be refused by that parser.
    text = (cli.CONFIG_DIR / config).read_text()
    misspelt = tmp_path / config
    misspelt.write_text(text.replace("export_dir:", "export_dri:", 1))
    assert misspelt.read_text() != text
    with pytest.raises(argparse.ArgumentError, match="export_dri") as refused:  # run() prints it as one line, exit 2
        cli.main(["fit", "--config", str(misspelt), "--print_config"])
    line = cli.user_error_line(refused.value)
    assert (
        line.startswith("ArgumentError: trainer.callbacks: callbacks.")
        and "Callback: Option 'export_dri' is not accepted" in line
    )


def test_both_sparsity_callbacks_list_the_targeting_arguments_with_their_defaults(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They are declared once (callbacks/_targeting.py) and reach each callback through ``**targets``."""
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    with pytest.raises(SystemExit):
        cli.main(["fit", "--config", "glue.yaml", "--trainer.callbacks.pattern=1:4", "--print_config"])
    callbacks = {c["class_path"]: c["init_args"] for c in yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]}
    expected = {"include": None, "exclude": None, "pattern_overrides": None, "strict": False}
    sparsify, prune = callbacks["callbacks.NxMSparsifyCallback"], callbacks["callbacks.HardPruneCallback"]
    assert {key: sparsify[key] for key in expected} == expected == {key: prune[key] for key in expected}
    # A command-line argument goes to the last callback given, here the HardPruneCallback.
    assert (sparsify["pattern"], prune["pattern"]) == ("2:4", "1:4")


def test_dense_fit_then_validate_reproduces_best(tmp_path: Path, glue_dir: Path, tiny_bert: Path) -> None:
    args = common_args(tmp_path, glue_dir, str(tiny_bert))
    fitted = run_cli("fit", "--config", "glue_dense.yaml", *args, "--trainer.max_epochs=2",
                     f"--trainer.callbacks.init_args.export_dir={tmp_path / 'dense'}")  # fmt: skip
    checkpoint = fitted.trainer.checkpoint_callback
    assert checkpoint.best_model_path.endswith(".ckpt") and Path(checkpoint.last_model_path).is_file()
    last = torch.load(checkpoint.last_model_path, map_location="cpu", weights_only=True)
    assert last["global_step"] == fitted.trainer.global_step  # last.ckpt follows every epoch, improved or not
    best = float(checkpoint.best_model_score)
    validated = run_cli("validate", "--config", "glue_dense.yaml", *args, f"--ckpt_path={checkpoint.best_model_path}")
    assert float(validated.trainer.callback_metrics["val/score"]) == pytest.approx(best, abs=1e-4)
    assert (tmp_path / "dense" / "config.json").is_file() and (tmp_path / "dense" / "tokenizer.json").is_file()
    tested = run_cli("test", "--config", "glue_dense.yaml", *args, f"--ckpt_path={checkpoint.best_model_path}")
    assert float(tested.trainer.callback_metrics["val/score"]) == pytest.approx(best, abs=1e-4)


def test_predict_returns_scores(tmp_path: Path, glue_dir: Path, tiny_bert_2labels: Path) -> None:
    module = SequenceClassificationModule(str(tiny_bert_2labels), "rte")
    dm = GLUEDataModule("rte", str(tiny_bert_2labels), data_dir=str(glue_dir), max_eval_samples=8, eval_batch_size=4)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    out = module.predict_step(batch, 0)
    assert len(out["labels"]) == 4 and set(out["labels"]) <= {"entailment", "not_entailment"}


@pytest.mark.slow
def test_glue_yaml_pipeline_with_minilm(tmp_path: Path, glue_dir: Path) -> None:
    """The main job on a few real examples: ADMM, hard prune, masked fine-tuning, export, verify, reload."""
    export = tmp_path / "export"
    args = [a for a in common_args(tmp_path, glue_dir, "sentence-transformers/all-MiniLM-L6-v2") if "model_name" not in a]
    config = yaml.safe_load((cli.CONFIG_DIR / "glue.yaml").read_text())
    sparsify, prune = config["trainer"]["callbacks"]
    # 4 optimizer steps an epoch: dense epoch 0, ADMM in epoch 1 (a Z-step at each step), masked epoch 2, with the
    # teacher snapshot taken where ADMM starts, as in the shipped config
    sparsify["init_args"].update(update_every=1, start_epoch=1, end_epoch=2)
    config["model"]["init_args"]["teacher_snapshot_epoch"] = 1
    prune["init_args"]["export_dir"] = str(export)
    (tmp_path / "glue.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "glue.yaml"), *args]  # a --config given later would override the others
    # fp32 on every CPU: the fp32 export must score exactly what validate logs; in bf16-mixed (the CLI's choice on
    # CPUs with native bf16) the two agree only to bf16's rounding, which on 4 steps of training and 32 examples can
    # move a Pearson near 0 by a lot (on a trained STS-B export: 84.75 in bf16-mixed, 84.74 in fp32)
    args.append("--trainer.precision=32-true")
    fitted = run_cli("fit", *args, "--trainer.max_epochs=3")
    module = fitted.model
    sparse_layers = [m for m in module.modules() if type(m).__name__ == "NxMLinear"]
    assert len(sparse_layers) == 36 and all(is_nxm(m.dense_weight(), 2, 4) for m in sparse_layers)
    assert verify(export) == []
    # plain transformers, the Lightning checkpoint and the in-memory model agree on the dev score
    dm = GLUEDataModule("stsb", str(export), data_dir=str(glue_dir), max_eval_samples=32, max_seq_length=32)
    dm.setup("validate")
    exported_score = SequenceClassificationModule(str(export), "stsb").evaluate_score(dm.val_dataloader())
    last = fitted.trainer.checkpoint_callback.last_model_path
    validated = run_cli("validate", *args, f"--ckpt_path={last}")
    assert float(validated.trainer.callback_metrics["val/score"]) == pytest.approx(exported_score, abs=1e-3)
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    query = checkpoint["state_dict"]["model.bert.encoder.layer.0.attention.self.query.weight"]
    assert is_nxm(query, 2, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.task_name=imdb"], "Unknown GLUE task 'imdb'. Valid task names: cola"),
        (["--data.data_dir=/nonexistent/glue"], "looked for the folder /nonexistent/glue/STS-B"),
        (["--model.init_args.model_name_or_path=/nonexistent/model"], "Cannot load model '/nonexistent/model'"),
    ],
)
def test_bad_input_on_the_command_line_is_one_clear_line(args: list[str], message: str) -> None:
    command = [sys.executable, "cli.py", "fit", "--config", "glue_dense.yaml", "--trainer.max_epochs=1", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_an_export_dir_holding_the_users_files_is_refused_before_training(
    tmp_path: Path, glue_dir: Path, tiny_bert: Path
) -> None:
    """``python cli.py fit`` as a user types it, with export_dir set to a folder of theirs: one error line naming the
    folder, no training (no checkpoint), and their file still there."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    command = [sys.executable, "cli.py", "fit", "--config", "glue_dense.yaml", *common_args(tmp_path, glue_dir, str(tiny_bert)),
               "--trainer.max_epochs=1", f"--trainer.callbacks.init_args.export_dir={mine}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and f"export_dir {mine.resolve()} already exists and is not an export" in errors[0]
    assert "Choose another export_dir, or remove it yourself" in errors[0]
    assert (mine / "notes.txt").read_text() == "my notes" and [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.rglob("*.ckpt"))  # refused before the first step: no epoch ended, no checkpoint


def test_a_fit_stopped_by_sigterm_exits_non_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning ends a fit gracefully on SIGTERM and would exit 0; scripts (the study driver) must see it did not end."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def stopped() -> None:
        raise SIGTERMException

    monkeypatch.setattr(cli, "main", stopped)
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == 143


def test_feature_distillation_from_the_command_line(tmp_path: Path, glue_dir: Path, tiny_bert: Path) -> None:
    """The main job's config with the feature-distillation switches given as command-line strings: the hidden-state
    term is the only loss after the snapshot, logged, and the run trains through ADMM and the cut to a 2:4 export."""
    export = tmp_path / "export"
    config = yaml.safe_load((cli.CONFIG_DIR / "glue.yaml").read_text())
    sparsify, prune = config["trainer"]["callbacks"]
    sparsify["init_args"].update(update_every=1, start_epoch=1, end_epoch=2, end_when_converged=False)
    config["model"]["init_args"].update(teacher_snapshot_epoch=1, cache_teacher_logits=False)
    prune["init_args"]["export_dir"] = str(export)
    (tmp_path / "glue.yaml").write_text(yaml.safe_dump(config))
    fitted = run_cli(
        "fit", "--config", str(tmp_path / "glue.yaml"), *common_args(tmp_path, glue_dir, str(tiny_bert)),
        "--trainer.max_epochs=3", "--model.init_args.alpha=0", "--model.init_args.logit_weight=0",
        "--model.init_args.hidden_weight=2", "--model.init_args.hidden_loss=normalized",
        "--model.init_args.hidden_layers=last",
    )  # fmt: skip
    module, metrics = fitted.model, fitted.trainer.callback_metrics
    assert module.layer_map == {2: 2} and module.hparams.hidden_loss == "normalized"
    assert float(metrics["train/hidden_loss"]) > 0
    assert float(metrics["train/loss"]) == pytest.approx(2 * float(metrics["train/hidden_loss"]), rel=1e-4)
    assert verify(export) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ('pattern: "4:2"', "ValueError: NxMSparsifyCallback: Invalid N:M pattern '4:2': need 0 < N < M (did you mean '2:4'?"),
        (
            "pattern: 2:4",
            "callbacks.NxMSparsifyCallback: pattern: Expected a <class 'str'>. Got value: 124 (YAML reads "
            'an unquoted 2:4 as the number 124: quote it, pattern: "2:4")',
        ),
        ("update_every: 0", "ValueError: NxMSparsifyCallback: update_every=0 must be >= 1"),
        ("rho: -0.01", "NxMSparsifyCallback: rho=-0.01 must be a positive finite number"),
        ("include: ['(']", "Invalid regular expression '(' in include"),
    ],
)
def test_config_time_errors_of_the_callbacks_are_one_line(
    tmp_path: Path, edit: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad callback argument in the YAML: one line naming the argument, not jsonargparse's 18-line Union dump.

    Through ``cli.run()`` with the command line in ``sys.argv`` (the shell entry point, in this process); the first
    case also as a real ``python cli.py`` process."""
    key = edit.split(":")[0]
    text = (cli.CONFIG_DIR / "glue.yaml").read_text()
    # The sparsifier's line of that key (the first callback's), or a new line under its pattern for a key it lacks.
    anchor = next(line for line in text.splitlines() if line.strip() == 'pattern: "2:4"')
    indent = anchor[: len(anchor) - len(anchor.lstrip())]
    line = next((line for line in text.splitlines() if line.startswith(f"{indent}{key}:")), None)
    text = text.replace(line, indent + edit, 1) if line else text.replace(anchor, f"{anchor}\n{indent}{edit}", 1)
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    monkeypatch.setattr(sys, "argv", ["cli.py", "fit", "--config", str(config)])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert exit_.value.code in (1, 2) and "Traceback" not in stderr
    assert len(errors) == 1 and message in errors[0], stderr[-3000:]
    assert "Does not validate against any of the Union subtypes" not in stderr
    if edit == "pattern: 2:4":
        result = subprocess.run([sys.executable, "cli.py", "fit", "--config", str(config)], capture_output=True,
                                text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr


def test_only_the_projects_own_errors_are_shortened() -> None:
    """A RuntimeError raised inside torch is a bug or a system fault: its traceback is kept (None: re-raise)."""
    from nxm_lightning.sparsity.nxm import NxMPattern

    try:
        torch.zeros(2, 3) @ torch.zeros(2, 3)
    except RuntimeError as err:
        assert cli.user_error_line(err) is None
    try:
        NxMPattern.parse("4:2")
    except ValueError as err:
        assert cli.user_error_line(err).startswith("ValueError: Invalid N:M pattern '4:2'")


def test_progress_lines_when_output_is_not_a_terminal(
    tmp_path: Path, glue_dir: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under pytest stdout is not a terminal, as under nohup or CI: the CLI prints plain progress lines that name the
    phase (dense, then ADMM, then masked fine-tuning after the cut) and the last validation score."""
    config = yaml.safe_load((cli.CONFIG_DIR / "glue.yaml").read_text())
    sparsify, prune = config["trainer"]["callbacks"]
    sparsify["init_args"].update(update_every=1, start_epoch=1, end_epoch=2, end_when_converged=False)
    config["model"]["init_args"]["teacher_snapshot_epoch"] = 1
    prune["init_args"]["export_dir"] = str(tmp_path / "export")
    (tmp_path / "glue.yaml").write_text(yaml.safe_dump(config))
    run_cli("fit", "--config", str(tmp_path / "glue.yaml"), *common_args(tmp_path, glue_dir, str(tiny_bert)),
            "--trainer.max_epochs=3", "--progress_log.every_n_steps=2")  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[progress]")]
    # 4 steps an epoch: a line at steps 2, 4, ... and one at each epoch end.
    assert len(lines) == 6 + 3
    assert lines[0].startswith("[progress] epoch 0/3, step 2/12, loss ") and "phase dense, val/score -" in lines[0]
    assert "phase ADMM" in lines[3] and "phase masked" in lines[-1] and "end of epoch" in lines[-1]
    assert "val/score -," not in lines[-1]  # a score by then


# 32 training rows of good STS-B scores: 4 optimizer steps an epoch at the common batch size of 8.
GOOD_SCORES = [f"{i % 5}.{i % 10}" for i in range(32)]


@pytest.mark.parametrize(
    ("diverge", "hint", "steps_saved"),
    [
        (["--model.init_args.learning_rate=1e30"], r"in the training loss .* Lower the learning rate", 1),
        (["--trainer.precision=16-true"], r"in the weights .* Train in '16-mixed' or 'bf16-mixed', not '16-true'", 0),
    ],
    ids=["learning_rate_1e30", "fp16_weights"],
)
def test_a_dense_fit_that_diverges_stops_before_a_checkpoint_or_export_holds_nan(
    diverge: list[str], hint: str, steps_saved: int, tmp_path: Path, tiny_bert: Path
) -> None:
    """The dense config has no sparsity callback: the guard the CLI always adds stops it, naming the dense phase and
    no rho. ``16-true`` turns every weight whose gradient is zero (unused embedding rows) NaN at the first step."""
    glue = write_stsb(tmp_path / "glue", GOOD_SCORES)
    export = tmp_path / "dense"
    args = [*common_args(tmp_path, glue, str(tiny_bert)), "--model.init_args.warmup_ratio=0", "--trainer.max_epochs=2",
            "--checkpoint.every_n_train_steps=1", "--checkpoint.monitor=null", "--checkpoint.save_top_k=-1",
            f"--trainer.callbacks.init_args.export_dir={export}"]  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"Non-finite values \(NaN/Inf\) in the .* in the dense phase") as error:
        run_cli("fit", "--config", "glue_dense.yaml", *args, *diverge)
    assert re.search(hint, str(error.value)) and "rho" not in str(error.value)
    assert_checkpoints_finite(tmp_path / "runs", at_least=steps_saved)  # those of the steps before, if any
    assert not export.exists()


@pytest.mark.parametrize(
    ("scores", "args", "message"),
    [
        ([*GOOD_SCORES[:5], "nan", *GOOD_SCORES[6:]], [], r"STS-B/train.tsv, line 7: label 'nan' is out of range for task "
                                                             r"'stsb': expected a number from 0 to 5"),
        (GOOD_SCORES, ["--data.max_seq_length=512"], "max_seq_length=512 is more than the 128 positions the model"),
    ],
    ids=["nan_score", "max_seq_length"],
)  # fmt: skip
def test_bad_data_from_the_command_line_is_one_line_before_training(
    scores: list[str], args: list[str], message: str, tmp_path: Path, tiny_bert: Path
) -> None:
    glue = write_stsb(tmp_path / "glue", scores)
    command = [sys.executable, "cli.py", "fit", "--config", "glue_dense.yaml", *common_args(tmp_path, glue, str(tiny_bert)),
               f"--trainer.callbacks.init_args.export_dir={tmp_path / 'dense'}", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and re.search(message, error_lines[0]), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt")) and not (tmp_path / "dense").exists()


@pytest.mark.parametrize(
    ("native_bf16", "given", "expected"),
    [(True, [], "bf16-mixed"), (False, [], "32-true"), (True, ["--trainer.precision=32-true"], "32-true")],
    ids=["native_bf16", "emulated_bf16", "precision_given"],
)
def test_the_precision_follows_the_hardware_unless_given(
    tmp_path: Path, glue_dir: Path, tiny_bert: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool, given: list[str], expected: str,
) -> None:  # fmt: skip
    """No --trainer.precision: bf16-mixed on a CPU with native bf16, said in one line; fp32 elsewhere or when given.
    validate follows the same rule, so it reproduces the score the fit logged."""
    monkeypatch.setattr(cli, "has_fast_bf16_cpu", lambda: native_bf16)
    caplog.set_level(logging.INFO)
    for name in ("lightning.pytorch", "lightning.fabric"):  # Lightning's own handlers write to stderr, unpropagated
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    args = [*common_args(tmp_path, glue_dir, str(tiny_bert)), *given]
    fitted = run_cli("fit", "--config", "glue_dense.yaml", *args, "--trainer.max_epochs=1",
                     f"--trainer.callbacks.init_args.export_dir={tmp_path / 'dense'}")  # fmt: skip
    assert fitted.trainer.precision == expected
    said = [message for message in caplog.messages if message.startswith("Precision bf16-mixed:")]
    assert len(said) == (expected == "bf16-mixed" and not given)
    saved = yaml.safe_load(Path(fitted.trainer.log_dir, "config.yaml").read_text())
    assert saved["trainer"]["precision"] == (None if expected == "32-true" and not given else expected)
    best = fitted.trainer.checkpoint_callback.best_model_path
    validated = run_cli("validate", "--config", "glue_dense.yaml", *args, f"--ckpt_path={best}")
    assert validated.trainer.precision == expected
    assert float(validated.trainer.callback_metrics["val/score"]) == pytest.approx(
        float(fitted.trainer.checkpoint_callback.best_model_score), abs=1e-4
    )


def test_the_precision_line_is_printed_by_the_command_a_user_types(tmp_path: Path, glue_dir: Path, tiny_bert: Path) -> None:
    """Through ``python cli.py``: the line appears exactly where this machine's CPU has native bf16."""
    from nxm_lightning.sparsity.precision import has_fast_bf16_cpu

    result = subprocess.run(
        [sys.executable, "cli.py", "fit", "--config", "glue_dense.yaml", *common_args(tmp_path, glue_dir, str(tiny_bert)),
         "--trainer.fast_dev_run=1", "--trainer.callbacks=[]", f"--trainer.default_root_dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("Precision bf16-mixed: the CPU has native bf16" in result.stderr) == has_fast_bf16_cpu()


def srste_config(tmp_path: Path, prune_args: dict) -> Path:
    """configs/glue_asp.yaml with SRSTECallback before its HardPruneCallback (given ``prune_args``)."""
    config = yaml.safe_load((cli.CONFIG_DIR / "glue_asp.yaml").read_text())
    prune = config["trainer"]["callbacks"][0]
    prune["init_args"].update(prune_args)
    config["trainer"]["callbacks"] = [{"class_path": "callbacks.SRSTECallback", "init_args": {"decay": 2e-4}}, prune]
    path = tmp_path / "srste.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_srste_then_the_cut_from_the_command_line(tmp_path: Path, glue_dir: Path, tiny_bert: Path) -> None:
    """SR-STE for one epoch, then the cut: validation already scored the 2:4 model, so the cut costs nothing."""
    export = tmp_path / "export"
    config = srste_config(tmp_path, {"at_epoch": 1, "export_dir": str(export), "backend": "masked"})
    fitted = run_cli("fit", "--config", str(config), *common_args(tmp_path, glue_dir, str(tiny_bert)), "--trainer.max_epochs=2")
    prune = next(cb for cb in fitted.trainer.callbacks if type(cb).__name__ == "HardPruneCallback")
    assert prune.pruned and prune.scores["before the cut"] == pytest.approx(prune.scores["after the cut"], abs=1e-6)
    assert verify(export) == []


def test_srste_without_a_later_cut_is_one_line_from_the_command_line(tmp_path: Path, glue_dir: Path, tiny_bert: Path) -> None:
    config = srste_config(tmp_path, {"export_dir": str(tmp_path / "export")})  # glue_asp.yaml's cut at fit start
    args = [sys.executable, "cli.py", "fit", "--config", str(config), *common_args(tmp_path, glue_dir, str(tiny_bert))]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and "neither at_step nor at_epoch" in errors[0]
