"""GLUEDataModule and SequenceClassificationModule: real GLUE files, metrics, model loading, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_stsb
from transformers import AutoConfig, BertForSequenceClassification

from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.glue import GLUE_TASKS, get_task
from nxm_lightning.tasks.hub import DEFAULT_MODEL, load_pretrained, resolve_model_name
from nxm_lightning.tasks.module import SequenceClassificationModule


@pytest.mark.parametrize(
    ("task", "num_labels", "labels"), [("stsb", 1, None), ("cola", 2, {0, 1}), ("rte", 2, {0, 1}), ("sst2", 2, {0, 1})]
)
def test_real_glue_files(glue_dir: Path, tiny_bert: Path, task: str, num_labels: int, labels: set | None) -> None:
    dm = GLUEDataModule(task, str(tiny_bert), data_dir=str(glue_dir), max_train_samples=40, max_eval_samples=20, batch_size=8)
    dm.setup("fit")
    assert dm.num_labels == num_labels
    assert len(dm.splits["train"]) == 40 and len(dm.splits["validation"][0]) == 20
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape[0] == 8
    assert batch["input_ids"].shape[1] <= 128
    if labels is None:
        assert batch["labels"].dtype == torch.float32 and 0 <= float(batch["labels"].min()) <= 5
    else:
        assert set(batch["labels"].tolist()) <= labels


def test_glue_dir_env_and_group_by_length(glue_dir: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    dm = GLUEDataModule("rte", str(tiny_bert), max_train_samples=64, group_by_length=True, batch_size=16, max_seq_length=64)
    dm.setup("fit")
    lengths = [batch["input_ids"].shape[1] for batch in dm.train_dataloader()]
    assert len(lengths) == 4 and max(lengths) <= 64


def test_relative_glue_dir_is_taken_from_the_starting_directory(
    glue_dir: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(glue_dir.parent)
    monkeypatch.setenv("GLUE_DIR", glue_dir.name)  # as the README's GLUE_DIR=../shared/data/glue, relative
    dm = GLUEDataModule("rte", str(tiny_bert), max_train_samples=8, max_eval_samples=8)
    monkeypatch.chdir(tmp_path)  # e.g. a test or a launcher that changes directory before setup
    dm.setup("fit")
    assert len(dm.splits["train"]) == 8


def test_train_subset_seed_draws_a_fixed_random_subset(glue_dir: Path, tiny_bert: Path) -> None:
    def labels(**kwargs: int) -> list[int]:
        dm = GLUEDataModule("sst2", str(tiny_bert), data_dir=str(glue_dir), max_train_samples=200, **kwargs)
        dm.setup("fit")
        return list(dm.splits["train"]["label"])

    first, seeded = labels(), labels(train_subset_seed=0)
    assert seeded == labels(train_subset_seed=0)  # the same subset for every run of the study
    assert seeded != first and seeded != labels(train_subset_seed=1)
    with pytest.raises(ValueError, match="needs max_train_samples"):
        GLUEDataModule("sst2", str(tiny_bert), train_subset_seed=0)


def test_length_group_batches_must_be_positive(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="length_group_batches=0 must be >= 1"):
        GLUEDataModule("rte", str(tiny_bert), group_by_length=True, length_group_batches=0)


def write_task(root: Path, directory: str, files: dict[str, str]) -> Path:
    (root / directory).mkdir(parents=True)
    for name, text in files.items():
        (root / directory / name).write_text(text)
    return root


def test_mnli_has_matched_and_mismatched_validation(tmp_path: Path, tiny_bert: Path) -> None:
    header = "index\tsentence1\tsentence2\tgold_label\n"
    rows = "".join(
        f"{i}\tA man {i} walks.\tSomeone moves.\t{lab}\n" for i, lab in enumerate(["entailment", "neutral", "contradiction"] * 4)
    )
    root = write_task(
        tmp_path,
        "MNLI",
        {
            "train.tsv": header + rows,
            "dev_matched.tsv": header + rows,
            "dev_mismatched.tsv": header + "".join(rows.splitlines(True)[:6]),
        },
    )
    dm = GLUEDataModule("mnli", str(tiny_bert), data_dir=str(root), batch_size=4)
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    assert dm.num_labels == 3
    module = SequenceClassificationModule(str(tiny_bert), "mnli")
    assert module.val_suffixes == ["_matched", "_mismatched"]
    assert 0 <= module.evaluate_score(loaders) <= 100


def test_unknown_task_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="Valid task names: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli"):
        get_task("imdb")
    assert get_task("STS-B").name == "stsb" and len(GLUE_TASKS) == 9


def test_missing_data_says_where_it_looked(tmp_path: Path, tiny_bert: Path) -> None:
    dm = GLUEDataModule("cola", str(tiny_bert), data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"looked for the folder {tmp_path}/CoLA.*GLUE_DIR"):
        dm.setup("fit")


def test_malformed_row_names_file_and_line(tmp_path: Path, tiny_bert: Path) -> None:
    good = "sentence\tlabel\nfine film\t1\n"
    root = write_task(tmp_path, "SST-2", {"train.tsv": good + "a\tb\t1\n", "dev.tsv": good})
    with pytest.raises(ValueError, match=r"SST-2/train.tsv, line 3: 3 tab-separated fields, expected 2"):
        GLUEDataModule("sst2", str(tiny_bert), data_dir=str(root)).setup("fit")


def test_label_out_of_range_names_file_and_line(tmp_path: Path, tiny_bert: Path) -> None:
    text = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n"
    root = write_task(tmp_path, "RTE", {"train.tsv": text, "dev.tsv": text})
    with pytest.raises(ValueError, match=r"RTE/train.tsv, line 3: label 'maybe' is out of range.*'not_entailment'"):
        GLUEDataModule("rte", str(tiny_bert), data_dir=str(root)).setup("fit")


def test_labels_out_of_range_in_a_batch(tiny_bert_2labels: Path) -> None:
    module = SequenceClassificationModule(str(tiny_bert_2labels), "sst2")
    batch = {
        "input_ids": torch.tensor([[101, 102]]),
        "attention_mask": torch.ones(1, 2, dtype=torch.long),
        "labels": torch.tensor([5]),
    }
    with pytest.raises(ValueError, match=r"Labels out of range for task 'sst2'.*expected 0..1"):
        module.validation_step(batch, 0)


def test_no_data_dir_goes_to_the_hub_and_explains_offline(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dm = GLUEDataModule("wnli", str(tiny_bert), cache_dir="/nonexistent-cache-dir-for-test")
    with pytest.raises(RuntimeError, match=r"Could not load nyu-mll/glue/wnli from the Hub.*GLUE_DIR"):
        dm.setup("fit")


def test_unresolvable_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"Cannot load model 'no-such-org/no-such-model'.*local directory"):
        load_pretrained(AutoConfig, "no-such-org/no-such-model")


@pytest.mark.slow
def test_packaged_minilm_loads_with_only_the_classifier_new() -> None:
    path = resolve_model_name(DEFAULT_MODEL)
    assert Path(path).is_dir() and path != DEFAULT_MODEL
    model, info = BertForSequenceClassification.from_pretrained(path, num_labels=1, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)


def test_module_rejects_wrong_num_labels(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="num_labels=3 does not fit task 'stsb'"):
        SequenceClassificationModule(str(tiny_bert), "stsb", num_labels=3)


def glue_rows(task_name: str) -> tuple[list[str] | None, list[list[str]]]:
    """A header (None for CoLA) and three labeled rows in the task's local file format."""
    task = get_task(task_name)
    labels = list(task.label_names) or ["0.5", "3.25", "5.0"]
    if not task.has_header:
        return None, [[f"src{i}", labels[i % len(labels)], "*", f"A sentence number {i}."] for i in range(3)]
    # The first column is one the reader needs, as in SST-2's "sentence\tlabel": a BOM would stick to its name.
    header = [*task.local_text_columns, task.local_label_column, "index"]
    rows = [[*(f"Text {i} of {c}." for c in task.local_text_columns), labels[i % len(labels)], str(i)] for i in range(3)]
    return header, rows


@pytest.mark.parametrize("variant", ["bom", "crlf", "trailing_blank_line", "all"])
@pytest.mark.parametrize("task_name", list(GLUE_TASKS))
def test_files_as_users_have_them(task_name: str, variant: str, tiny_bert: Path, tmp_path: Path) -> None:
    task = get_task(task_name)
    header, rows = glue_rows(task_name)
    newline = "\r\n" if variant in ("crlf", "all") else "\n"
    text = newline.join("\t".join(r) for r in ([header] if header else []) + rows) + newline
    if variant in ("trailing_blank_line", "all"):
        text += newline
    if variant in ("bom", "all"):
        text = "\ufeff" + text
    for name in ("train.tsv", *task.validation_files):
        (tmp_path / task.directory).mkdir(exist_ok=True)
        (tmp_path / task.directory / name).write_bytes(text.encode("utf-8"))
    dm = GLUEDataModule(task_name, str(tiny_bert), data_dir=str(tmp_path))
    train = dm._read_tsv(tmp_path / task.directory / "train.tsv", labeled=True)
    assert len(train) == 3
    first_text = train[0][task.text_columns[0]]
    assert first_text.startswith(("Text 0", "A sentence number 0")) and not first_text.endswith("\r")
    if task.is_regression:
        assert train["label"] == pytest.approx([0.5, 3.25, 5.0])
    else:
        assert train["label"] == [i % task.num_labels for i in range(3)]


@pytest.mark.parametrize("score", ["nan", "NaN", "inf", "-inf", "50", "-0.5", "five"])
def test_stsb_score_that_is_not_finite_or_outside_0_to_5_names_file_and_line(score: str, tmp_path: Path, tiny_bert: Path) -> None:
    """float() takes 'nan' and 'inf': such a score trained the model to NaN weights, and 50 to nonsense."""
    root = write_stsb(tmp_path, ["1.0", "2.5", score])
    with pytest.raises(ValueError, match=rf"STS-B/train.tsv, line 4: label '{score}' is out of range for task 'stsb': "
                                         r"expected a number from 0 to 5\. Fix or remove that line\."):  # fmt: skip
        GLUEDataModule("stsb", str(tiny_bert), data_dir=str(root)).setup("fit")


@pytest.mark.parametrize("blank", ["\n", "   \n", "\r\n"])
def test_a_bad_label_after_blank_lines_is_reported_at_its_own_line(blank: str, tmp_path: Path, tiny_bert: Path) -> None:
    """The reader skips blank lines; the line given is still the file's (it was one too small per blank line)."""
    text = "index\tsentence1\tsentence2\tlabel\n" + blank + "0\ta\tb\tentailment\n" + blank + "1\tc\td\tmaybe\n"
    root = write_task(tmp_path, "RTE", {"train.tsv": text, "dev.tsv": text})
    with pytest.raises(ValueError, match=r"RTE/train.tsv, line 5: label 'maybe'"):
        GLUEDataModule("rte", str(tiny_bert), data_dir=str(root)).setup("fit")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"GLUE file .*/SST-2/train.tsv is empty"),
        (b"\n\n", r"GLUE file .*/SST-2/train.tsv is empty"),
        (b"sentence\tlabel\n", r"GLUE file .*/SST-2/train.tsv has a header line \(sentence, label\) but no data rows"),
        (b"sentence\tlabel\nfine\t1\nd\xe9j\xe0 vu\t1\n", r"GLUE file .*/SST-2/train.tsv, line 3: not UTF-8 text"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", r"GLUE file .*/SST-2/train.tsv, line 1: not UTF-8 text"),
        (b"sentence\tlabel\nfine\t1\n\x00\x00\x00\t1\n", r"GLUE file .*/SST-2/train.tsv, line 3: not UTF-8 text"),
    ],
    ids=["empty", "blank_lines_only", "header_only", "latin1", "gzip", "nul_bytes"],
)
def test_an_unreadable_data_file_is_named(content: bytes, message: str, tmp_path: Path, tiny_bert: Path) -> None:
    root = write_task(tmp_path, "SST-2", {"dev.tsv": "sentence\tlabel\nfine film\t1\n"})
    (root / "SST-2" / "train.tsv").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        GLUEDataModule("sst2", str(tiny_bert), data_dir=str(root)).setup("fit")


def test_max_seq_length_beyond_the_models_positions_is_refused_at_setup(glue_dir: Path, tiny_bert: Path) -> None:
    """The tiny BERT embeds 128 positions: a batch of 129 tokens would crash mid-epoch in the embeddings."""
    import lightning.pytorch as pl

    dm = GLUEDataModule("rte", str(tiny_bert), data_dir=str(glue_dir), max_seq_length=256, max_train_samples=8,
                        max_eval_samples=8)  # fmt: skip
    module = SequenceClassificationModule(str(tiny_bert), "rte")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"max_seq_length=256 is more than the 128 positions the model .* can embed"):
        trainer.fit(module, dm)
    assert trainer.global_step == 0
