"""SR-STE: the projection's gradient by hand, the forward replacement on Linear and Conv1D, and SRSTECallback in fit."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import KillAfter, Killed, ToyModule, toy_loader, toy_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from transformers.pytorch_utils import Conv1D

from callbacks import HardPruneCallback, NxMSparsifyCallback, SRSTECallback
from nxm_lightning.sparsity.nxm import is_nxm, nxm_mask, nxm_project
from nxm_lightning.sparsity.srste import ProjectedForward, srste_weight
from nxm_lightning.sparsity.targets import select_targets

INCLUDE = [r"^net\.[02]$"]  # ToyModule's two hidden Linear layers


def test_the_gradient_passes_straight_through_plus_decay_on_the_dropped_entries() -> None:
    weight = torch.tensor([[0.5, -2.0, 0.1, 1.0], [3.0, 0.2, -0.3, 0.0]], requires_grad=True)
    out = srste_weight(weight, 2, 4, decay=0.1)
    assert torch.equal(out, torch.tensor([[0.0, -2.0, 0.0, 1.0], [3.0, 0.0, -0.3, 0.0]]))
    upstream = torch.arange(8.0).reshape(2, 4)
    out.backward(upstream)
    # kept: the upstream gradient; dropped: the upstream gradient + 0.1 * W
    expected = upstream + 0.1 * torch.tensor([[0.5, 0.0, 0.1, 0.0], [0.0, 0.2, 0.0, 0.0]])
    assert torch.allclose(weight.grad, expected)


@pytest.mark.parametrize("layer", ["linear", "conv1d"])
def test_the_forward_computes_with_the_projection_and_the_state_stays_dense(layer: str) -> None:
    torch.manual_seed(0)
    inner = nn.Linear(8, 6) if layer == "linear" else Conv1D(6, 8)  # Conv1D(nf=out, nx=in), weight [in, out]
    model = nn.Sequential(nn.Sequential(inner))  # a name matching the default "layer.N" include is not needed here
    targets = select_targets(model, "2:4", include=[r"^0\.0$"])
    x = torch.randn(3, 5, 8)
    dense_out = model(x)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    projection = ProjectedForward(targets, decay=0.0)
    weight = targets[0].weight  # [out, in]
    expected = x @ nxm_project(weight.detach(), 2, 4).t() + inner.bias.detach()
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert not torch.allclose(model(x), dense_out)
    assert model.state_dict().keys() == dense_state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in dense_state.items())
    # A copy (e.g. a teacher snapshot) computes with its plain weights; the original still projects.
    assert torch.allclose(copy.deepcopy(model)(x), dense_out)
    assert torch.allclose(model(x), expected, atol=1e-6)
    projection.active = False
    assert torch.allclose(model(x), dense_out)
    projection.active = True
    projection.remove()
    assert "forward" not in vars(inner) and torch.allclose(model(x), dense_out)


def test_a_second_projection_on_the_same_layer_is_refused() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    targets = select_targets(model, "2:4", include=[r"^0$"])
    ProjectedForward(targets)
    with pytest.raises(ValueError, match="already has its forward replaced"):
        ProjectedForward(targets)


class MaskProbe(Callback):
    """Records net.0's magnitude mask (and whether its weight is still dense) before every training batch, and
    whether each validation batch's output is the projected model's."""

    def __init__(self) -> None:
        self.masks: list[torch.Tensor] = []
        self.dense_groups: list[bool] = []
        self.validation_matches: list[bool] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, i: int) -> None:
        weight = pl_module.net[0].weight.detach()
        self.masks.append(nxm_mask(weight, 2, 4))
        self.dense_groups.append(not is_nxm(weight, 2, 4))

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                                batch: tuple[torch.Tensor, torch.Tensor], i: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        x = batch[0]
        net = pl_module.net
        w0, w2 = (nxm_project(layer.weight.detach(), 2, 4) for layer in (net[0], net[2]))
        h = torch.relu(torch.relu(x @ w0.t() + net[0].bias) @ w2.t() + net[2].bias)
        self.validation_matches.append(torch.allclose(net(x), net[4](h), atol=1e-5))


def test_srste_trains_dense_weights_whose_mask_moves_until_the_cut(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyModule(lr=3e-2)
    probe = MaskProbe()
    prune = HardPruneCallback(include=INCLUDE, at_step=16, backend="masked")
    trainer = toy_trainer(tmp_path, [SRSTECallback(include=INCLUDE), prune, probe], max_epochs=4)  # 8 steps an epoch
    trainer.fit(model, toy_loader(), toy_loader(seed=1))
    before, after = probe.masks[:17], probe.masks[17:]
    assert all(probe.dense_groups[:16]), "the weights stay dense while SR-STE trains them"
    assert any(not torch.equal(a, b) for a, b in zip(before, before[1:])), "the mask moves during SR-STE"
    assert all(torch.equal(mask, after[0]) for mask in after), "the mask is fixed after the cut"
    assert torch.equal(after[0], before[-1]), "the cut keeps SR-STE's last mask"
    assert probe.validation_matches and all(probe.validation_matches), "validation scores the projected model"
    assert prune.pruned and is_nxm(model.net[0].dense_weight(), 2, 4)
    assert "forward" not in vars(model.net[0])  # removed at fit end (the layer is an NxMLinear now anyway)


def test_srste_resume_is_exact(tmp_path: Path) -> None:
    def callbacks(folder: Path) -> list:
        return [
            SRSTECallback(include=INCLUDE, decay=0.01),
            HardPruneCallback(include=INCLUDE, at_step=24, backend="masked"),
            ModelCheckpoint(dirpath=folder / "ckpt", save_last=True, every_n_epochs=1),
        ]

    torch.manual_seed(0)
    straight = ToyModule()
    toy_trainer(tmp_path / "a", callbacks(tmp_path / "a"), max_epochs=4).fit(straight, toy_loader())
    torch.manual_seed(0)
    with pytest.raises(Killed):  # killed in SR-STE, at the start of epoch 2 (step 16)
        toy_trainer(tmp_path / "b", [*callbacks(tmp_path / "b"), KillAfter(2)], max_epochs=4).fit(ToyModule(), toy_loader())
    resumed = ToyModule()
    toy_trainer(tmp_path / "b", callbacks(tmp_path / "b"), max_epochs=4).fit(
        resumed, toy_loader(), ckpt_path=tmp_path / "b" / "ckpt" / "last.ckpt"
    )
    for name in ("net.0", "net.2"):
        assert torch.allclose(straight.get_submodule(name).dense_weight(), resumed.get_submodule(name).dense_weight(), atol=1e-6)


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        ([], "needs exactly one with its targets"),
        ([HardPruneCallback(include=[r"^net\.0$"], at_step=4)], "with other targets"),
        ([HardPruneCallback(include=INCLUDE)], "neither at_step nor at_epoch"),
        ([NxMSparsifyCallback(include=INCLUDE), HardPruneCallback(include=INCLUDE)], "use one of them"),
    ],
    ids=["no-cut", "other-targets", "cut-at-fit-start", "beside-admm"],
)
def test_a_setup_without_a_later_cut_is_refused_at_fit_start(tmp_path: Path, callbacks: list, message: str) -> None:
    model = ToyModule()
    with pytest.raises(ValueError, match=message):
        toy_trainer(tmp_path, [SRSTECallback(include=INCLUDE), *callbacks], max_epochs=1).fit(model, toy_loader())
    assert "forward" not in vars(model.net[0])


@pytest.mark.parametrize("decay", [-1.0, float("nan"), "0.1"])
def test_bad_decay_is_refused(decay: object) -> None:
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        SRSTECallback(decay=decay)
