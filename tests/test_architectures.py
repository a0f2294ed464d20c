"""Every supported architecture, tiny and random, with the default targets: ADMM, hard prune, export, reload, verify.

The README's "Supported architectures" table lists the targeted layers of ``tiny_models.ARCHITECTURES``; these tests
pin them.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import toy_trainer
from tiny_models import ARCHITECTURES, VOCAB, block_layer, tiny_model
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification
from transformers.pytorch_utils import Conv1D

from callbacks import HardPruneCallback, NxMSparsifyCallback
from nxm_lightning.sparsity.admm import ADMMState
from nxm_lightning.sparsity.nxm import is_nxm, nxm_project
from nxm_lightning.sparsity.sparse_linear import NxMLinear
from nxm_lightning.sparsity.targets import select_targets
from nxm_lightning.sparsity.verify import verify


class TinyClassifier(pl.LightningModule):
    """A transformers classifier built from a config (no weights to download), trained on random tokens."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.model = tiny_model(arch)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.model(**batch).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def random_batches(n: int = 16, seq: int = 12, batch_size: int = 4, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, seq), generator=generator)  # never the pad token (0 or 1)
    labels = torch.randint(0, 2, (n,), generator=generator)
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long), "labels": labels[i]} for i in range(n)]
    return DataLoader(rows, batch_size=batch_size)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_default_targets(arch: str) -> None:
    _, layers, blocks = ARCHITECTURES[arch]
    targets = select_targets(tiny_model(arch))
    assert sorted(block_layer(t.name) for t in targets) == sorted(layers * blocks)
    assert len({id(t.module.weight) for t in targets}) == len(targets)  # one target per weight, shared or not
    assert all(t.shape[1] % 4 == 0 for t in targets)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_admm_prune_export_reload_verify(arch: str, tmp_path: Path) -> None:
    module = TinyClassifier(arch)
    sparsify = NxMSparsifyCallback(pattern="2:4", update_every=2, end_step=8)
    prune = HardPruneCallback(backend="masked", export_dir=str(tmp_path / "export"))
    # 12 optimizer steps: ADMM with Z-steps at 2, 4, 6 and 8, the cut at step 8, masked fine-tuning to the end
    trainer = toy_trainer(tmp_path, [sparsify, prune], max_steps=12, enable_checkpointing=False)
    trainer.fit(module, random_batches())

    assert sparsify.finished and prune.pruned
    assert sparsify.admm is not None and sparsify.admm.zstep_count == 4
    for target in sparsify.targets:
        served = module.get_submodule(target.name)
        assert isinstance(served, NxMLinear) and is_nxm(served.dense_weight(), 2, 4)

    export = tmp_path / "export"
    assert verify(export) == []
    manifest = json.loads((export / "sparsity.json").read_text())
    assert len(manifest["layers"]) == len(sparsify.targets)
    assert {e["layout"] for e in manifest["layers"].values()} == {"in_out" if arch == "gpt2" else "out_in"}
    assert manifest["overall_density"] == pytest.approx(0.5)

    reloaded = AutoModelForSequenceClassification.from_pretrained(export).eval()
    reloaded_targets = select_targets(reloaded)
    assert all(is_nxm(t.weight, 2, 4) for t in reloaded_targets)
    if arch == "gpt2":  # Conv1D stores [in, out]: the groups run along its first axis, not along the stored rows
        assert not all(is_nxm(t.module.weight, 2, 4) for t in reloaded_targets)
    batch = next(iter(random_batches(n=4, seed=1)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, module(**inputs), atol=1e-5, rtol=1e-5)


def test_conv1d_target_is_the_transposed_view() -> None:
    """GPT-2's Conv1D: the mask, the ADMM pull and the penalty gradient all act on [out, in], reaching the parameter."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"h": nn.ModuleList([nn.ModuleDict({"c_fc": Conv1D(nf=8, nx=16)})])})
    (target,) = select_targets(model)
    stored = target.module.weight
    assert target.transposed and target.shape == (8, 16) and tuple(stored.shape) == (16, 8)
    state = ADMMState([target], rho=0.5, penalty="gradient")
    state.initialize()
    assert torch.equal(state.z["h.0.c_fc"], nxm_project(stored.detach().t(), 2, 4))
    stored.grad = torch.zeros_like(stored)
    with torch.no_grad():
        stored.add_(0.1)  # W moves away from Z
    violation = stored.detach().t() - state.z["h.0.c_fc"] + state.u["h.0.c_fc"]
    state.add_penalty_grad()
    torch.testing.assert_close(stored.grad.t(), 0.5 * violation)
    before = stored.detach().t().clone()
    state.apply_decoupled_pull()
    torch.testing.assert_close(stored.detach().t(), before - 0.5 * violation)


def test_shared_weight_is_one_target() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    twin = nn.Linear(8, 8)
    twin.weight = shared.weight  # tied: two modules, one weight
    model = nn.ModuleDict({"layer": nn.ModuleList([shared, twin, nn.Linear(8, 8)])})
    assert [t.name for t in select_targets(model, include=[r"^layer\."])] == ["layer.0", "layer.2"]


class Projection(nn.Module):
    """A custom matmul layer: neither nn.Linear nor Conv1D, so it cannot be targeted."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


def test_untargetable_layers_are_named_in_the_error() -> None:
    model = nn.ModuleDict({"blocks": nn.ModuleList([nn.ModuleDict({"proj": Projection(), "norm": nn.LayerNorm(8)})]),
                           "head": nn.Linear(8, 2)})  # fmt: skip
    with pytest.raises(ValueError, match=r"Candidate nn.Linear names: head\..*blocks\.0\.proj \(Projection, weight 8x16\)"):
        select_targets(model)
