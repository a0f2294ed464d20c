"""GLUEDataModule: GLUE from local ``glue_data`` files (``data_dir`` / ``GLUE_DIR``) or the Hub, tokenized once."""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import lightning.pytorch as pl
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, DataCollatorWithPadding

from nxm_lightning.tasks.glue import GlueTask, get_task
from nxm_lightning.tasks.hub import DEFAULT_MODEL, load_pretrained
from nxm_lightning.tasks.sampling import ShuffledLengthBuckets

HUB_DATASET = "nyu-mll/glue"


class GLUEDataModule(pl.LightningDataModule):
    """GLUE for sequence classification, tokenized once with the model's tokenizer and padded per batch.

    Args:
        task_name: one of cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli.
        model_name_or_path: whose tokenizer to use (linked from the model by ``cli.py``).
        data_dir: folder in the classic ``glue_data`` layout (``<dir>/STS-B/train.tsv``, ``dev.tsv``, ...);
            default: the ``GLUE_DIR`` environment variable; with neither, the Hub dataset ``nyu-mll/glue``.
        max_seq_length: longer inputs are truncated; batches are padded to their longest member only.
        batch_size / eval_batch_size: per device.
        group_by_length: batch training examples of similar length together (less padding), with the batches in
            random order (:class:`~nxm_lightning.tasks.sampling.ShuffledLengthBuckets`).
        length_group_batches: with ``group_by_length``, how many batches are sorted by length together: more saves
            more padding, fewer keeps each batch a more random sample (STS-B, batch 32: mean padded length 29 with
            50, 38 with 4, 70 without grouping).
        max_train_samples / max_eval_samples: keep only the first examples, for quick runs.
        train_subset_seed: with ``max_train_samples``, keep a random subset drawn with this seed instead of the
            first examples (a file sorted by source or label would otherwise give a biased subset).
        num_workers: DataLoader worker processes.
        cache_dir: where ``datasets`` keeps its cache (default: its own); the tokenized splits are cached by
            fingerprint there and reused across runs.

    Example::

        dm = GLUEDataModule("stsb", data_dir="../shared/data/glue", max_train_samples=64)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
    """

    def __init__(
        self,
        task_name: str = "stsb",
        model_name_or_path: str = DEFAULT_MODEL,
        data_dir: str | None = None,
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        group_by_length: bool = False,
        length_group_batches: int = 50,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        train_subset_seed: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.task: GlueTask = get_task(task_name)
        for name, value in (("max_seq_length", max_seq_length), ("batch_size", batch_size),
                            ("eval_batch_size", eval_batch_size)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer.")
        self.save_hyperparameters()
        self.model_name_or_path = model_name_or_path
        data_dir = data_dir if data_dir is not None else os.environ.get("GLUE_DIR")
        # Relative to the working directory of the run's start, even if something changes directory later.
        self.data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        if length_group_batches < 1:
            raise ValueError(f"length_group_batches={length_group_batches} must be >= 1.")
        self.group_by_length = group_by_length
        self.length_group_batches = length_group_batches
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        if train_subset_seed is not None and max_train_samples is None:
            raise ValueError(
                f"train_subset_seed={train_subset_seed} needs max_train_samples (the subset's size); set both or neither."
            )
        self.train_subset_seed = train_subset_seed
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.tokenizer = load_pretrained(AutoTokenizer, model_name_or_path)
        self.splits: dict[str, datasets.Dataset | list[datasets.Dataset]] = {}

    @property
    def num_labels(self) -> int:
        """1 for regression (stsb), else the number of classes: linked into the model by ``cli.py``."""
        return self.task.num_labels

    @property
    def task_name(self) -> str:
        return self.task.name

    # ---- loading -------------------------------------------------------------------------------------------------

    def _local_dir(self) -> Path | None:
        if not self.data_dir:
            return None
        task_dir = Path(self.data_dir).expanduser() / self.task.directory
        if not task_dir.is_dir():
            raise FileNotFoundError(
                f"GLUE data for task {self.task.name!r} not found: looked for the folder {task_dir} "
                f"(data_dir={self.data_dir!r}). Point --data.data_dir or the GLUE_DIR environment variable at a folder "
                f"in the glue_data layout (<dir>/{self.task.directory}/train.tsv, dev.tsv), or set neither to use the "
                f"Hub dataset {HUB_DATASET} (needs network)."
            )
        return task_dir

    def _read_tsv(self, path: Path, labeled: bool) -> datasets.Dataset:
        if not path.is_file():
            raise FileNotFoundError(
                f"GLUE file missing: {path}. Expected the glue_data layout <dir>/{self.task.directory}/"
                f"{{train.tsv,{','.join(self.task.validation_files)}}} under data_dir / GLUE_DIR."
            )
        columns = _check_tsv(path, self.task.local_columns if not self.task.has_header else None)
        dataset = datasets.load_dataset(
            "csv",
            data_files=str(path),
            split="train",
            sep="\t",
            quoting=3,  # csv.QUOTE_NONE: GLUE text contains unbalanced quote characters
            header=0 if self.task.has_header else None,
            column_names=list(columns),
            features=datasets.Features({c: datasets.Value("string") for c in columns}),
            na_filter=False,
            encoding="utf-8-sig",  # a byte-order mark (one GLUE task's original files begin with one) is not text
            cache_dir=self.cache_dir,
        )
        wanted = list(self.task.local_text_columns) + ([self.task.local_label_column] if labeled else [])
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise ValueError(f"{path}: columns {missing} missing; the file has {list(columns)}.")
        dataset = dataset.select_columns(wanted)
        dataset = dataset.rename_columns(dict(zip(self.task.local_text_columns, self.task.text_columns)))
        if labeled:
            if self.task.local_label_column != "label":
                dataset = dataset.rename_column(self.task.local_label_column, "label")
            dataset = dataset.map(
                _LabelParser(self.task, str(path)), batched=True, with_indices=True, desc=f"labels of {path.name}"
            )
        return dataset

    def _load_split(self, split: str) -> datasets.Dataset | list[datasets.Dataset]:
        local = self._local_dir()
        if local is not None:
            if split == "train":
                return self._read_tsv(local / "train.tsv", labeled=True)
            if split == "validation":
                return [self._read_tsv(local / f, labeled=True) for f in self.task.validation_files]
            return self._read_tsv(local / self.task.local_test_file, labeled=False)
        names = {
            "train": ["train"],
            "validation": list(self.task.hub_validation_splits),
            "test": [self.task.hub_test_split],
        }
        try:
            loaded = [datasets.load_dataset(HUB_DATASET, self.task.name, split=s, cache_dir=self.cache_dir) for s in names[split]]
        except Exception as err:
            raise RuntimeError(
                f"Could not load {HUB_DATASET}/{self.task.name} from the Hub ({type(err).__name__}: {err}). Offline, "
                "point --data.data_dir or GLUE_DIR at local GLUE files in the glue_data layout."
            ) from None
        if split == "test":
            loaded = [d.remove_columns("label") for d in loaded]
        return loaded if split == "validation" else loaded[0]

    def prepare_data(self) -> None:
        # Loading and tokenizing here fills the datasets cache once, on one process, before setup() on every rank.
        self._tokenized("train")
        self._tokenized("validation")

    def _tokenized(self, split: str) -> datasets.Dataset | list[datasets.Dataset]:
        loaded = self._load_split(split)
        parts = loaded if isinstance(loaded, list) else [loaded]
        limit = self.max_train_samples if split == "train" else self.max_eval_samples
        tokenized = []
        for part in parts:
            if limit is not None:
                if split == "train" and self.train_subset_seed is not None:
                    part = part.shuffle(seed=self.train_subset_seed)
                part = part.select(range(min(limit, len(part))))
            tokenized.append(
                part.map(
                    _Tokenize(self.tokenizer, self.task.text_columns, self.max_seq_length),
                    batched=True,
                    remove_columns=list(self.task.text_columns),
                    desc=f"tokenizing {self.task.name} {split}",
                )
            )
        return tokenized if isinstance(loaded, list) else tokenized[0]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.splits["train"] = self._tokenized("train")
        if stage in (None, "fit", "validate", "test"):
            self.splits["validation"] = self._tokenized("validation")
        if stage in (None, "predict"):
            self.splits["test"] = self._tokenized("test")

    # ---- loaders -------------------------------------------------------------------------------------------------

    def _loader(self, dataset: datasets.Dataset, batch_size: int, train: bool) -> DataLoader:
        dataset = dataset.with_format("torch")
        sampler = None
        if train and self.group_by_length:
            lengths = [len(ids) for ids in dataset["input_ids"]]
            sampler = ShuffledLengthBuckets(lengths, batch_size, self.length_group_batches)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=DataCollatorWithPadding(self.tokenizer),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits["train"], self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(d, self.eval_batch_size, train=False) for d in self.splits["validation"]]
        return loaders if len(loaders) > 1 else loaders[0]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        # GLUE test labels are private: `test` scores the labeled dev sets; `predict` runs on the test files.
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], self.eval_batch_size, train=False)

    def state_dict(self) -> dict[str, Any]:
        return {"task_name": self.task.name}


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The 1-based line number and tab-separated fields of each line that pandas reads as a row (the header included).

    As ``pandas.read_csv`` does, lines of spaces only are skipped and ``\\r``, ``\\n`` or ``\\r\\n`` ends a line,
    so that the numbers given here are the file's own. Bytes that are not UTF-8, and NUL (a binary file), are refused
    with the line they are on.
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        for line_no, line in enumerate(handle, start=1):
            if _NOT_TEXT.search(line):
                raise ValueError(
                    f"GLUE file {path}, line {line_no}: not UTF-8 text (a binary file, or another encoding). GLUE files "
                    "are UTF-8 tab-separated text: convert it to UTF-8 (e.g. iconv -t utf-8) or point data_dir at the "
                    "glue_data folder."
                )
            text = line.rstrip("\r\n")
            if text.strip(" "):
                yield line_no, text.split("\t")


# What errors="surrogateescape" makes of bytes that are not UTF-8, and NUL, which no text file holds.
_NOT_TEXT = re.compile("[\udc80-\udcff\x00]")


def _check_tsv(path: Path, columns: tuple[str, ...] | None) -> tuple[str, ...]:
    """Column names of a GLUE TSV, after checking it has data rows and every row has that many fields (else: the file,
    the line and what to fix), so that no bad file reaches the ``datasets`` reader, whose errors name neither."""
    lines = _lines(path)
    if columns:
        names = columns
    else:
        _, header = next(lines, (0, []))
        names = tuple(header)
    rows = 0
    for line_no, fields in lines:
        if len(fields) != len(names):
            raise ValueError(
                f"Malformed GLUE file {path}, line {line_no}: {len(fields)} tab-separated fields, expected "
                f"{len(names)} ({', '.join(names)}). Fix or remove that line."
            )
        rows += 1
    if not rows:
        what = "is empty" if columns or not names else f"has a header line ({', '.join(names)}) but no data rows"
        raise ValueError(f"GLUE file {path} {what}: restore it from the glue_data download, or point data_dir elsewhere.")
    return names


def _row_line(path: Path, index: int, has_header: bool) -> int:
    """The file's line number of data row ``index`` (0-based, as ``datasets`` numbers them): blank lines counted."""
    lines = (line_no for line_no, _ in _lines(path))
    return next(itertools.islice(lines, index + has_header, None))


class _LabelParser:
    """Map label strings to ids (or floats for regression); a bad label names the file, the line and what is valid."""

    def __init__(self, task: GlueTask, path: str) -> None:
        self.task, self.path = task, path

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        return {"label": [self._parse(raw, index) for index, raw in zip(indices, batch["label"])]}

    def _parse(self, raw: str, index: int) -> float | int:
        value = raw.strip()
        task = self.task
        if not task.is_regression:
            if value in task.label_names:
                return task.label_names.index(value)
            valid = f"one of {list(task.label_names)}"
        else:
            low, high = task.label_range
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            # float() takes "nan" and "inf": a NaN label trains the model to NaN weights.
            if math.isfinite(number) and low <= number <= high:
                return number
            valid = f"a number from {low:g} to {high:g}"
        line = _row_line(Path(self.path), index, task.has_header)
        raise ValueError(
            f"{self.path}, line {line}: label {raw!r} is out of range for task {task.name!r}: expected {valid}. "
            "Fix or remove that line."
        )


class _Tokenize:
    """Picklable tokenizing function (datasets fingerprints it to cache the tokenized split across runs)."""

    def __init__(self, tokenizer: Any, text_columns: tuple[str, ...], max_length: int) -> None:
        self.tokenizer, self.text_columns, self.max_length = tokenizer, text_columns, max_length

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[c] for c in self.text_columns]
        return self.tokenizer(*texts, truncation=True, max_length=self.max_length)
