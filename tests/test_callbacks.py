"""NxMSparsifyCallback and HardPruneCallback on a plain (non-Hugging Face) LightningModule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ToyModule, toy_loader, toy_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks import HardPruneCallback, NxMSparsifyCallback
from nxm_lightning.nxm import is_nxm
from nxm_lightning.sparse_linear import NxMLinear

INCLUDE = [r"^net\.[02]$"]  # the two hidden Linear layers; net.4 (16 -> 1) is the head


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_admm_then_hard_prune_leaves_exact_nxm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyModule()
    sparsify = NxMSparsifyCallback("2:4", include=INCLUDE, rho=0.05, penalty="decoupled", update_every=2, end_fraction=0.5)
    prune = HardPruneCallback(backend="masked")
    toy_trainer(tmp_path, [sparsify, prune], max_epochs=4).fit(model, toy_loader(), toy_loader(seed=1))
    assert sparsify.finished and prune.pruned
    for name in ("net.0", "net.2"):
        layer = model.get_submodule(name)
        assert isinstance(layer, NxMLinear) and layer.backend == "masked"
        assert is_nxm(layer.dense_weight(), 2, 4)
    assert isinstance(model.net[4], torch.nn.Linear)  # untouched head
    assert sparsify.admm is not None and sparsify.admm.zstep_count == 8  # 32 steps, ADMM for 16, Z every 2


def test_residual_falls_during_admm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sparsify = NxMSparsifyCallback("2:4", include=INCLUDE, rho=0.1, penalty="decoupled", update_every=4)
    residuals: list[float] = []

    class Record(HardPruneCallback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if sparsify.last_stats is not None and trainer.global_step % 4 == 0:
                residuals.append(sparsify.last_stats.primal_residual)

    toy_trainer(tmp_path, [sparsify, Record(backend="masked")], max_epochs=6).fit(ToyModule(lr=1e-3), toy_loader())
    assert len(residuals) >= 8
    assert residuals[-1] < 0.5 * residuals[0]


def test_gradient_penalty_mode_adds_rho_times_violation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sparsify = NxMSparsifyCallback("2:4", include=INCLUDE, rho=0.5)
    model = ToyModule(lr=0.0)  # lr 0: weights stay, so the gradient can be checked after the hook
    seen: dict[str, torch.Tensor] = {}

    class Spy(NxMSparsifyCallback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            seen["before"] = pl_module.net[0].weight.grad.clone()
            sparsify.on_before_optimizer_step(trainer, pl_module, optimizer)
            seen["after"] = pl_module.net[0].weight.grad.clone()

    spy = Spy("2:4", include=INCLUDE)
    trainer = toy_trainer(tmp_path, [spy], max_steps=1)
    sparsify.setup(trainer, model, "fit")
    sparsify.admm.initialize()  # type: ignore[union-attr]
    trainer.fit(model, toy_loader())
    admm = sparsify.admm
    expected = 0.5 * (model.net[0].weight - admm.z["net.0"] + admm.u["net.0"])  # type: ignore[union-attr]
    assert torch.allclose(seen["after"] - seen["before"], expected.detach(), atol=1e-6)


def test_masked_fine_tuning_keeps_zeros_with_adamw(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyModule(lr=0.05)  # AdamW with weight decay 0.1: moments would move zeros without re-masking
    prune = HardPruneCallback(include=INCLUDE, backend="masked")
    zeros_after_cut: dict[str, torch.Tensor] = {}

    class Check(HardPruneCallback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            for name in ("net.0", "net.2"):
                weight = pl_module.get_submodule(name).weight
                zeros_after_cut.setdefault(name, weight == 0)
                assert torch.all(weight[zeros_after_cut[name]] == 0)

    trainer = toy_trainer(tmp_path, [prune, Check(include=INCLUDE, at_step=10**9, score_at_prune=False)], max_epochs=3)
    before = weights(model)
    trainer.fit(model, toy_loader())
    assert prune.pruned
    assert zeros_after_cut["net.0"].float().mean() == pytest.approx(0.5)
    changed = model.net[0].dense_weight() != before["net.0.weight"]
    assert changed.any()  # kept weights did train


def test_prune_happens_at_fit_end_if_training_stops_early(tmp_path: Path) -> None:
    prune = HardPruneCallback(include=INCLUDE, at_epoch=50, backend="masked")
    model = ToyModule()
    with pytest.warns(UserWarning, match="before the planned prune point"):
        toy_trainer(tmp_path, [prune], max_epochs=1).fit(model, toy_loader())
    assert prune.pruned and is_nxm(model.net[0].dense_weight(), 2, 4)


def test_sparsify_alone_warns_at_fit_end(tmp_path: Path) -> None:
    sparsify = NxMSparsifyCallback("2:4", include=INCLUDE, rho=0.01)
    with pytest.warns(UserWarning, match="NOT exactly N:M"):
        toy_trainer(tmp_path, [sparsify], max_epochs=1).fit(ToyModule(), toy_loader())


def _resume_run(tmp_path: Path, interrupt: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)

    def callbacks() -> list:
        return [
            NxMSparsifyCallback("2:4", include=INCLUDE, rho=0.05, penalty="decoupled", update_every=3, end_step=20),
            HardPruneCallback(backend="masked"),
            ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1),
        ]

    model = ToyModule()
    if interrupt:
        toy_trainer(tmp_path, callbacks(), max_epochs=2).fit(model, toy_loader())  # stops mid-ADMM (16 of 20 steps)
        model = ToyModule()
        toy_trainer(tmp_path, callbacks(), max_epochs=5).fit(model, toy_loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    else:
        toy_trainer(tmp_path, callbacks(), max_epochs=5).fit(model, toy_loader())
    return {name: model.get_submodule(name).dense_weight() for name in ("net.0", "net.2")}


def test_resume_is_exact(tmp_path: Path) -> None:
    straight = _resume_run(tmp_path / "a", interrupt=False)
    resumed = _resume_run(tmp_path / "b", interrupt=True)
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_resume_refuses_other_pattern(tmp_path: Path) -> None:
    model = ToyModule()
    first = NxMSparsifyCallback("2:4", include=INCLUDE, rho=0.01)
    toy_trainer(tmp_path, [first, ModelCheckpoint(dirpath=tmp_path, save_last=True)], max_epochs=1).fit(model, toy_loader())
    other = NxMSparsifyCallback("2:4", include=INCLUDE, pattern_overrides={"net.2": "1:4"}, rho=0.01)
    assert other.state_key == first.state_key  # the config's overrides were edited between the runs
    with pytest.raises(ValueError, match="another model or N:M pattern"):
        toy_trainer(tmp_path, [other], max_epochs=2).fit(ToyModule(), toy_loader(), ckpt_path=tmp_path / "last.ckpt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pattern": "4:2"}, "N:M pattern"),
        ({"penalty": "sideways"}, "penalty"),
        ({"update_every": 0}, "update_every"),
        ({"end_epoch": 1, "end_step": 5}, "at most one"),
        ({"end_fraction": 1.5}, "end_fraction"),
        ({"rho": -1.0}, "rho"),
    ],
)
def test_sparsify_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NxMSparsifyCallback(**kwargs)


def test_hard_prune_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Valid backends: auto, masked, packed, semi_structured"):
        HardPruneCallback(backend="fastest")
    with pytest.raises(ValueError, match="at most one"):
        HardPruneCallback(at_epoch=1, at_step=3)


def test_include_matching_nothing_is_an_error(tmp_path: Path) -> None:
    sparsify = NxMSparsifyCallback("2:4", include=["attention"])
    with pytest.raises(ValueError, match=r"Candidate nn.Linear names: net.0, net.2, net.4"):
        toy_trainer(tmp_path, [sparsify]).fit(ToyModule(), toy_loader())


def test_export_before_prune_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not been pruned"):
        HardPruneCallback().export(ToyModule())


def test_state_keys_let_two_instances_coexist() -> None:
    assert NxMSparsifyCallback("2:4").state_key != NxMSparsifyCallback("1:4").state_key
