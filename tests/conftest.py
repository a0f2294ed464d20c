"""Shared fixtures: tiny random BERTs (seconds per test), the real GLUE files, and toy Lightning modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, DataCollatorWithPadding

from nxm_lightning.tasks.hub import DEFAULT_MODEL, resolve_model_name

# The tests never need the Hub: fail fast offline instead of waiting on network time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# Resolved now: a relative GLUE_DIR (the README's ../shared/data/glue) must survive the tests that chdir.
GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue")).expanduser().resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "STS-B" / "train.tsv").is_file():
        pytest.skip(f"GLUE files not found under {GLUE_DIR}; set GLUE_DIR")
    return GLUE_DIR


def save_tiny_bert(path: Path, num_labels: int = 1, hidden: int = 32, layers: int = 2, initializer_range: float = 0.02) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer, saved as a Hugging Face folder."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=128, num_labels=num_labels,
        initializer_range=initializer_range,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model_name(DEFAULT_MODEL)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_bert_2labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert2"), num_labels=2)


class ToyModule(pl.LightningModule):
    """A plain nn.Module regression model (no Hugging Face), to show the callbacks work on any LightningModule."""

    def __init__(self, lr: float = 1e-2, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))
        self.lr = lr
        self.dropout = dropout

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = nn.functional.dropout(x, self.dropout, self.training)
        return nn.functional.mse_loss(self.net(x).squeeze(-1), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/score", -nn.functional.mse_loss(self.net(x).squeeze(-1), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.1)


def toy_loader(n: int = 64, seed: int = 0, shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=generator)
    y = x[:, :4].sum(-1) + 0.1 * torch.randn(n, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=shuffle)


def toy_trainer(tmp_path: Path, callbacks: list, **kwargs: object) -> pl.Trainer:
    defaults = dict(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=2, num_sanity_val_steps=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **defaults)


def text_loader(tokenizer: Path, n: int = 16, batch_size: int = 4, regression: bool = True, shuffle: bool = False) -> DataLoader:
    """Sentence pairs of varying length (so batches are padded differently), with STS-B-like or binary labels."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    rows = []
    for i in range(n):
        encoded = tokenizer(f"Sentence number {i} says" + " more" * (i % 5), f"A reply to {i}.", truncation=True, max_length=32)
        rows.append({**encoded, "labels": float(i % 6) if regression else i % 2})
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=DataCollatorWithPadding(tokenizer))


STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def stsb_rows(scores: list[str]) -> str:
    """STS-B rows in the glue_data format, one per score (given as the file's text)."""
    row = "{i}\tmain\tf\t2012\t{i}\tnone\tnone\tA man {i} walks{more}.\tSomeone {i} moves.\t{score}\n"
    return "".join(row.format(i=i, more=" far" * (i % 5), score=score) for i, score in enumerate(scores))


def write_stsb(root: Path, train_scores: list[str], dev_size: int = 8) -> Path:
    """A GLUE folder holding STS-B only: a train.tsv with these scores and a dev.tsv of ``dev_size`` good rows."""
    (root / "STS-B").mkdir(parents=True)
    (root / "STS-B" / "train.tsv").write_text(STSB_HEADER + stsb_rows(train_scores))
    (root / "STS-B" / "dev.tsv").write_text(STSB_HEADER + stsb_rows([f"{i % 6}.0" for i in range(dev_size)]))
    return root


def assert_checkpoints_finite(folder: Path, at_least: int) -> None:
    """Every .ckpt under ``folder`` loads with weights_only=True and holds no NaN/Inf weight, and there are some."""
    paths = sorted(folder.rglob("*.ckpt"))
    assert len(paths) >= at_least, paths
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        bad = [name for name, tensor in state.items() if not bool(torch.isfinite(tensor).all())]
        assert not bad, f"{path.name}: {bad}"


class Killed(Exception):
    """Raised by :class:`KillAfter` in place of a real kill."""


class KillAfter(Callback):
    """Stops the run at the start of epoch ``epochs``, after that epoch's checkpoint, without fit-end hooks."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.epochs:
            raise Killed


def run_verify(path: Path) -> subprocess.CompletedProcess:
    """``python -m nxm_lightning.sparsity.verify PATH`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "nxm_lightning.sparsity.verify", str(path)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip


def verify_line(path: Path, status: int) -> str:
    """What ``python -m nxm_lightning.sparsity.verify PATH`` prints, checked to be one line, no traceback, exit ``status``."""
    result = run_verify(path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == status and "Traceback" not in output and len(output.splitlines()) == 1, output
    return output
