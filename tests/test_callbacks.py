"""NxMSparsifyCallback and HardPruneCallback on a plain (non-Hugging Face) LightningModule."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import KillAfter, Killed, ToyModule, text_loader, toy_loader, toy_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from callbacks import HardPruneCallback, NxMSparsifyCallback, SavePretrainedCallback
from callbacks.protocols import ADMMEndListener, HoldsPretrainedModel, ScoredModule, hf_model_attribute, pretrained_model
from nxm_lightning.sparsity.nxm import is_nxm, nxm_mask
from nxm_lightning.sparsity.saliency import fisher_saliency
from nxm_lightning.sparsity.sparse_linear import NxMLinear
from nxm_lightning.sparsity.verify import verify
from nxm_lightning.tasks.module import SequenceClassificationModule

INCLUDE = [r"^net\.[02]$"]  # the two hidden Linear layers; net.4 (16 -> 1) is the head


class OnStep(Callback):
    """A probe: calls ``fn(trainer, pl_module)`` after every training batch, after the callbacks listed before it."""

    def __init__(self, fn: Callable[[pl.Trainer, pl.LightningModule], None]) -> None:
        self.fn = fn

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.fn(trainer, pl_module)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_admm_then_hard_prune_leaves_exact_nxm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyModule()
    sparsify = NxMSparsifyCallback(include=INCLUDE, rho=0.05, penalty="decoupled", update_every=2, end_fraction=0.5)
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
    sparsify = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, rho=0.1, penalty="decoupled", update_every=4)
    residuals: list[float] = []

    def record(trainer, pl_module) -> None:  # noqa: ANN001
        if sparsify.last_stats is not None and trainer.global_step % 4 == 0:
            residuals.append(sparsify.last_stats.primal_residual)

    toy_trainer(tmp_path, [sparsify, HardPruneCallback(backend="masked"), OnStep(record)], max_epochs=6).fit(
        ToyModule(lr=1e-3), toy_loader()
    )
    assert len(residuals) >= 8
    assert residuals[-1] < 0.5 * residuals[0]


def test_gradient_penalty_mode_adds_rho_times_violation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sparsify = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, rho=0.5, rho_factor=1.0, penalty="gradient")
    model = ToyModule(lr=0.0)  # lr 0: weights stay, so the gradient can be checked after the hook
    seen: dict[str, torch.Tensor] = {}

    class Spy(NxMSparsifyCallback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            seen["before"] = pl_module.net[0].weight.grad.clone()
            sparsify.on_before_optimizer_step(trainer, pl_module, optimizer)
            seen["after"] = pl_module.net[0].weight.grad.clone()

    spy = Spy(pattern="2:4", include=INCLUDE, penalty="gradient", rho_factor=1.0)
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

    def check(trainer, pl_module) -> None:  # noqa: ANN001
        for name in ("net.0", "net.2"):
            weight = pl_module.get_submodule(name).weight
            zeros_after_cut.setdefault(name, weight == 0)
            assert torch.all(weight[zeros_after_cut[name]] == 0)

    trainer = toy_trainer(tmp_path, [prune, OnStep(check)], max_epochs=3)
    before = weights(model)
    trainer.fit(model, toy_loader())
    assert prune.pruned
    assert zeros_after_cut["net.0"].float().mean() == pytest.approx(0.5)
    changed = model.net[0].dense_weight() != before["net.0.weight"]
    assert changed.any()  # kept weights did train


def test_validating_a_routed_model_decides_its_backend_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After fit the layers are NxMLinear (masked on the CPU); a later validate re-decides where the model is now."""
    import nxm_lightning.sparsity.sparse_linear as sparse_linear

    model = ToyModule()
    prune = HardPruneCallback(include=INCLUDE, backend="auto")
    toy_trainer(tmp_path, [prune], max_epochs=1).fit(model, toy_loader())
    assert {model.net[0].backend, model.net[2].backend} == {"masked"}
    decided: list[str] = []

    def select_as_on_a_gpu(requested: str, weight: torch.Tensor, *args: object, **kwargs: object) -> str:
        decided.append(requested)
        return "packed"  # any backend other than the current one: the layers must be rebuilt with it

    monkeypatch.setattr(sparse_linear, "select_backend", select_as_on_a_gpu)
    before = model.net[0].dense_weight().clone()
    toy_trainer(tmp_path, [HardPruneCallback(include=INCLUDE, backend="auto")]).validate(model, toy_loader(seed=1))
    assert decided[:2] == ["auto", "auto"] and {model.net[0].backend, model.net[2].backend} == {"packed"}
    assert torch.equal(model.net[0].dense_weight(), before)


def test_the_callbacks_metrics_are_flushed_as_they_are_logged(tmp_path: Path) -> None:
    """A run killed right after a Z-step or the cut (at a session's end, say) must still have those points on disk."""
    from lightning.pytorch.loggers import Logger

    calls: list[str] = []

    class Recorder(Logger):
        name, version = "recorder", 0

        def log_hyperparams(self, params: object) -> None:
            pass

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            calls.extend(tag for tag in metrics if tag in ("admm/primal_residual", "sparsity/overall_density"))

        def save(self) -> None:
            calls.append("flush")

    sparsify = NxMSparsifyCallback(include=INCLUDE, update_every=2, end_step=8)
    trainer = toy_trainer(tmp_path, [sparsify, HardPruneCallback(backend="masked")], logger=Recorder(), max_epochs=2)
    trainer.fit(ToyModule(), toy_loader(), toy_loader(seed=1))
    logged = [i for i, call in enumerate(calls) if call != "flush"]
    assert {calls[i] for i in logged} == {"admm/primal_residual", "sparsity/overall_density"}
    assert all(calls[i + 1] == "flush" for i in logged)


def test_prune_happens_at_fit_end_if_training_stops_early(tmp_path: Path) -> None:
    prune = HardPruneCallback(include=INCLUDE, at_epoch=50, backend="masked")
    model = ToyModule()
    with pytest.warns(UserWarning, match="before the planned prune point"):
        toy_trainer(tmp_path, [prune], max_epochs=1).fit(model, toy_loader())
    assert prune.pruned and is_nxm(model.net[0].dense_weight(), 2, 4)


def test_sparsify_alone_warns_at_fit_end(tmp_path: Path) -> None:
    sparsify = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, update_every=2)
    with pytest.warns(UserWarning, match="NOT exactly N:M"):
        toy_trainer(tmp_path, [sparsify], max_epochs=1).fit(ToyModule(), toy_loader())


def _resume_run(tmp_path: Path, interrupt: bool, start_step: int | None = None, stop_epochs: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)

    def callbacks() -> list:
        return [
            NxMSparsifyCallback(
                pattern="2:4",
                include=INCLUDE,
                rho=0.05,
                rho_factor="auto",
                rho_max=0.4,
                penalty="decoupled",
                update_every=3,
                start_step=start_step,
                end_step=20,
            ),  # fmt: skip
            HardPruneCallback(backend="masked"),
            ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1),
        ]

    model = ToyModule()
    if interrupt:
        # Killed after `stop_epochs` of the same 5-epoch run (no fit-end hooks run, as with a real kill)
        with pytest.raises(Killed):
            toy_trainer(tmp_path, [*callbacks(), KillAfter(stop_epochs)], max_epochs=5).fit(model, toy_loader())
        model = ToyModule()
        toy_trainer(tmp_path, callbacks(), max_epochs=5).fit(model, toy_loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    else:
        toy_trainer(tmp_path, callbacks(), max_epochs=5).fit(model, toy_loader())
    return {name: model.get_submodule(name).dense_weight() for name in ("net.0", "net.2")}


@pytest.mark.parametrize(
    ("start_step", "stop_epochs"),
    [(None, 2), (10, 1), (10, 2)],
    ids=["mid-admm", "in-the-dense-phase", "mid-admm-after-a-dense-phase"],
)
def test_resume_is_exact(tmp_path: Path, start_step: int | None, stop_epochs: int) -> None:
    # 8 steps an epoch: stopped at step 8 (before a start at 10) or at step 16 (in the phase, which ends at 20)
    straight = _resume_run(tmp_path / "a", interrupt=False, start_step=start_step)
    resumed = _resume_run(tmp_path / "b", interrupt=True, start_step=start_step, stop_epochs=stop_epochs)
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


class PhaseProbe(Callback):
    """Records, after every optimizer step, whether the ADMM phase is running and how many Z-steps it took."""

    def __init__(self, sparsify: NxMSparsifyCallback) -> None:
        self.sparsify = sparsify
        self.steps: list[tuple[int, bool, int]] = []
        self.weights_at: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        admm = self.sparsify.admm
        self.steps.append((trainer.global_step, self.sparsify.active, admm.zstep_count if admm else 0))
        self.weights_at[trainer.global_step] = pl_module.net[0].weight.detach().clone()


def test_dense_phase_then_admm_from_the_start_point(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = ToyModule()
    toy_trainer(tmp_path / "plain", [], max_steps=8).fit(plain, toy_loader())
    torch.manual_seed(0)
    sparsify = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, rho=0.05, penalty="decoupled", update_every=4,
                                   start_step=8, end_step=24)  # fmt: skip
    probe = PhaseProbe(sparsify)
    toy_trainer(tmp_path / "admm", [sparsify, HardPruneCallback(backend="masked"), probe], max_epochs=4).fit(
        ToyModule(), toy_loader()
    )
    active = [step for step, running, _ in probe.steps if running]
    assert active == list(range(8, 24))  # started after step 8, ended at step 24
    assert torch.equal(probe.weights_at[8], plain.net[0].weight)  # before the start: plain dense training
    zsteps_at = [step for (step, _, count), (_, _, before) in zip(probe.steps[1:], probe.steps) if count > before]
    assert zsteps_at == [12, 16, 20, 24]


def _converging_run(tmp_path: Path, **kwargs: object) -> NxMSparsifyCallback:
    torch.manual_seed(0)
    args = dict(include=INCLUDE, penalty="decoupled", rho=0.01, rho_factor=1.0, update_every=4, start_step=16, end_step=96)
    sparsify = NxMSparsifyCallback(pattern="2:4", **{**args, **kwargs})
    toy_trainer(tmp_path, [sparsify, HardPruneCallback(backend="masked")], max_epochs=14).fit(ToyModule(), toy_loader())
    return sparsify


def test_growing_rho_converges_on_a_tiny_model(tmp_path: Path) -> None:
    closing = _converging_run(tmp_path / "auto", rho_factor="auto", rho_max=0.5)
    stats = closing.last_stats
    assert stats is not None and stats.rho == pytest.approx(0.5)
    assert stats.mask_flip_rate <= 0.005 and stats.primal_residual <= 1e-3
    assert closing.verdict().startswith("Converged: last mask flip rate")
    constant = _converging_run(tmp_path / "constant")  # rho 0.01 throughout: W never gets to N:M in the phase
    assert constant.last_stats is not None and constant.last_stats.primal_residual > 1e-3
    assert "NOT converged" in constant.verdict()


def test_end_when_converged_ends_the_phase_early(tmp_path: Path) -> None:
    sparsify = _converging_run(tmp_path, rho=0.3, end_when_converged=True)
    assert sparsify.finished and sparsify.admm is not None and sparsify.admm.zstep_count < 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_step": 200}, r"would start at step 200, but training has 16 optimizer steps \(8 per epoch\)"),
        ({"start_fraction": 0.5, "end_step": 6}, "would start at step 8 and end at step 6"),
        (
            {"rho_factor": "auto", "update_every": 20},
            r"to rho_max=0.5 over the phase's Z-steps, but the phase \(steps 0 to 16\) has 0",
        ),
        (
            {"rho_factor": 1.1, "rho_max": 0.5, "update_every": 2},
            r"only 8 Z-steps, so rho reaches 0.0195, not rho_max=0.5. Use rho_factor >= 1.749",
        ),
    ],
)
def test_phase_refused_before_training(tmp_path: Path, kwargs: dict, message: str) -> None:
    sparsify = NxMSparsifyCallback(pattern="2:4", **{"include": INCLUDE, "rho_factor": 1.0, **kwargs})
    probe = PhaseProbe(sparsify)
    with pytest.raises(ValueError, match=message):
        toy_trainer(tmp_path, [sparsify, probe], max_epochs=2).fit(ToyModule(), toy_loader())
    assert probe.steps == []  # refused before the first step


def test_resume_refuses_other_pattern(tmp_path: Path) -> None:
    model = ToyModule()
    first = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, update_every=2)
    toy_trainer(tmp_path, [first, ModelCheckpoint(dirpath=tmp_path, save_last=True)], max_epochs=1).fit(model, toy_loader())
    other = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, pattern_overrides={"net.2": "1:4"}, update_every=2)
    assert other.state_key == first.state_key  # the config's overrides were edited between the runs
    with pytest.raises(ValueError, match="another model or N:M pattern"):
        toy_trainer(tmp_path, [other], max_epochs=2).fit(ToyModule(), toy_loader(), ckpt_path=tmp_path / "last.ckpt")


@pytest.mark.parametrize("changed", [{"pattern": "1:4"}, {"include": [r"^net\.0$"]}])
def test_resume_with_other_targeting_arguments_is_refused(tmp_path: Path, changed: dict) -> None:
    """The state key holds the pattern and include: another of either used to drop the saved Z, U, rho and masks."""
    first = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, update_every=2)
    toy_trainer(tmp_path, [first, ModelCheckpoint(dirpath=tmp_path, save_last=True)], max_epochs=1).fit(ToyModule(), toy_loader())
    other = NxMSparsifyCallback(**{"pattern": "2:4", "include": INCLUDE, **changed}, update_every=2)
    assert other.state_key != first.state_key
    with pytest.raises(ValueError, match="state was saved with other targeting arguments .* Resume with the same pattern"):
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
        ({"start_epoch": 3, "end_epoch": 2}, r"start \(start_epoch=3\) at or after its end \(end_epoch=2\)"),
        ({"start_step": 1, "start_fraction": 0.2}, "at most one of start_epoch, start_step, start_fraction"),
        ({"rho_max": None}, "rho_factor: auto grows rho .* set rho_max above rho"),
        ({"rho_max": 1.5}, r"rho_max \(=1.5\) are the fraction of \(W - Z \+ U\) removed per step"),
        ({"rho_factor": "fast"}, "rho_factor='fast' must be a number >= 1 or 'auto'"),
        ({"saliency": "size"}, "saliency"),
        ({"converged_flip_rate": 2.0}, "converged_flip_rate=2.0 must be in"),
        ({"rho_max": float("nan")}, "rho_max=nan must be a positive finite number"),
        ({"rho_factor": float("nan"), "rho_max": 0.5}, "rho_factor=nan must be a finite number >= 1"),
    ],
)
def test_sparsify_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NxMSparsifyCallback(**kwargs)


class GradientProbe(Callback):
    """Records net.0's gradient at every optimizer step and its weight at the start of step ``at``, before the cut."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.grads: list[torch.Tensor] = []
        self.weight_before_cut: torch.Tensor | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        self.grads.append(pl_module.net[0].weight.grad.detach().clone())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.at:
            self.weight_before_cut = pl_module.net[0].weight.detach().clone()


def test_a_fisher_cut_keeps_the_largest_squared_gradient_sum_times_w_squared(tmp_path: Path) -> None:
    torch.manual_seed(0)
    probe = GradientProbe(at=6)
    prune = HardPruneCallback(include=INCLUDE, at_step=6, saliency="fisher", backend="masked")
    toy_trainer(tmp_path, [probe, prune], max_epochs=1).fit(ToyModule(), toy_loader())
    fisher = sum(grad.square() for grad in probe.grads[:6])
    weight = probe.weight_before_cut
    expected = nxm_mask(fisher_saliency(fisher, weight), 2, 4)
    assert torch.equal(prune.masks["net.0"].bool(), expected.bool())
    assert not torch.equal(expected.bool(), nxm_mask(weight, 2, 4).bool())  # the gradients changed what stays


def test_a_run_killed_while_the_fisher_is_gathered_resumes_to_the_same_cut(tmp_path: Path) -> None:
    def run(folder: Path, kill: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        prune = HardPruneCallback(include=INCLUDE, at_step=12, saliency="fisher", backend="masked")  # 8 steps an epoch
        checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, every_n_epochs=1)
        model = ToyModule()
        if kill:
            with pytest.raises(Killed):
                toy_trainer(folder, [prune, checkpoint, KillAfter(1)], max_epochs=3).fit(model, toy_loader())
            saved = torch.load(folder / "last.ckpt", weights_only=True)["callbacks"][prune.state_key]
            assert saved["fisher"]["steps"] == 8 and "masks" not in saved
            prune = HardPruneCallback(include=INCLUDE, at_step=12, saliency="fisher", backend="masked")
            model = ToyModule()
            toy_trainer(folder, [prune, checkpoint], max_epochs=3).fit(model, toy_loader(), ckpt_path=folder / "last.ckpt")
        else:
            toy_trainer(folder, [prune, checkpoint], max_epochs=3).fit(model, toy_loader())
        return prune.masks

    straight, resumed = run(tmp_path / "a", kill=False), run(tmp_path / "b", kill=True)
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_hard_prune_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Valid values: auto, masked, packed, semi_structured"):
        HardPruneCallback(backend="fastest")
    with pytest.raises(ValueError, match="at most one"):
        HardPruneCallback(at_epoch=1, at_step=3)
    with pytest.raises(ValueError, match=r"saliency='taylor' is not one of \('magnitude', 'fisher'\)"):
        HardPruneCallback(saliency="taylor")
    for when in ({}, {"at_step": 0}, {"after_admm": True}):
        with pytest.raises(ValueError, match="set at_step"):
            HardPruneCallback(saliency="fisher", **when)


def test_include_matching_nothing_is_an_error(tmp_path: Path) -> None:
    sparsify = NxMSparsifyCallback(pattern="2:4", include=["attention"])
    with pytest.raises(ValueError, match=r"Candidate nn.Linear names: net.0, net.2, net.4"):
        toy_trainer(tmp_path, [sparsify]).fit(ToyModule(), toy_loader())


class BackboneModule(SequenceClassificationModule):
    """A module whose Hugging Face model lives at ``backbone.hf``, not ``model``, as its ``hf_model_attribute`` says."""

    hf_model_attribute = "backbone.hf"

    def __init__(self, model_name_or_path: str) -> None:
        super().__init__(model_name_or_path, "stsb")
        self.backbone = torch.nn.Module()
        self.backbone.hf = self.model
        del self.model

    def setup(self, stage: str) -> None:
        pass

    def forward(self, **inputs: torch.Tensor) -> object:
        return self.backbone.hf(**inputs)


def test_the_modules_protocols(tiny_bert: Path) -> None:
    """The task layer's modules meet the callbacks' protocols structurally; a plain module meets none."""
    module = SequenceClassificationModule(str(tiny_bert), "stsb")
    assert isinstance(module, ScoredModule) and isinstance(module, HoldsPretrainedModel)
    assert hf_model_attribute(module) == "model" and pretrained_model(module) is module.model
    toy = ToyModule()
    assert not isinstance(toy, ScoredModule) and not isinstance(toy, HoldsPretrainedModel)
    assert hf_model_attribute(toy) == "model" and pretrained_model(toy) is None
    backbone = BackboneModule(str(tiny_bert))
    assert hf_model_attribute(backbone) == "backbone.hf" and pretrained_model(backbone) is backbone.backbone.hf
    backbone.hf_model_attribute = ""  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"BackboneModule.hf_model_attribute must name the submodule .* it is ''"):
        hf_model_attribute(backbone)


def test_export_takes_the_hf_model_where_the_module_says(tmp_path: Path, tiny_bert: Path) -> None:
    module = BackboneModule(str(tiny_bert))
    prune = HardPruneCallback(at_epoch=1, export_dir=str(tmp_path / "export"), backend="masked")
    toy_trainer(tmp_path, [prune], max_epochs=2).fit(module, text_loader(tiny_bert), text_loader(tiny_bert, n=8))
    assert prune.targets and all(t.name.startswith("backbone.hf.bert.encoder.") for t in prune.targets)
    assert set(prune.scores) == {"before the cut", "after the cut"}  # scored through ScoredModule
    layers = json.loads((tmp_path / "export" / "sparsity.json").read_text())["layers"]
    assert sorted(layers) == sorted(f"{t.name.removeprefix('backbone.hf.')}.weight" for t in prune.targets)
    assert verify(tmp_path / "export") == []


def test_export_of_a_module_without_a_hf_model_names_where_it_looked(tmp_path: Path) -> None:
    prune = HardPruneCallback(include=INCLUDE, backend="masked")
    toy_trainer(tmp_path, [prune], max_epochs=1).fit(ToyModule(), toy_loader())
    with pytest.raises(TypeError, match=r"export_dir needs pl_module.model to be a transformers PreTrainedModel; ToyModule"):
        prune.export(ToyModule())


def test_eval_pruned_needs_a_scored_module(tmp_path: Path) -> None:
    sparsify = NxMSparsifyCallback(include=INCLUDE, eval_pruned=True)
    with pytest.raises(ValueError, match=r"eval_pruned: true needs the LightningModule to define evaluate_score"):
        toy_trainer(tmp_path, [sparsify], max_epochs=1).fit(ToyModule(), toy_loader())


def test_export_before_prune_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not been pruned"):
        HardPruneCallback().export(ToyModule())


def test_two_instances_coexist_in_one_checkpoint(tmp_path: Path) -> None:
    def callbacks() -> list:
        return [
            NxMSparsifyCallback(pattern="2:4", include=[r"^net\.0$"], rho=0.05, penalty="decoupled", update_every=2),
            NxMSparsifyCallback(pattern="1:4", include=[r"^net\.2$"], rho=0.02, penalty="decoupled", update_every=3),
        ]

    first = callbacks()
    trainer = toy_trainer(tmp_path, [*first, ModelCheckpoint(dirpath=tmp_path, save_last=True)], max_epochs=1)
    trainer.fit(ToyModule(), toy_loader())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    assert {first[0].state_key, first[1].state_key} <= set(saved)
    assert saved[first[0].state_key]["admm"]["patterns"] == {"net.0": "2:4"}
    assert saved[first[1].state_key]["admm"]["patterns"] == {"net.2": "1:4"}
    resumed = callbacks()
    with pytest.raises(Killed):  # each instance gets its own state back (checked at the first step of the resumed run)
        trainer = toy_trainer(tmp_path, [*resumed, KillAfter(1)], max_epochs=3)
        trainer.fit(ToyModule(), toy_loader(), ckpt_path=tmp_path / "last.ckpt")
    for before, after in zip(first, resumed):
        assert after.admm is not None and after.admm.zstep_count == before.admm.zstep_count > 0
        assert all(torch.equal(after.admm.u[name], before.admm.u[name]) for name in before.admm.u)


def test_each_hard_prune_follows_the_sparsifier_with_its_targets(tmp_path: Path) -> None:
    first = dict(pattern="2:4", include=[r"^net\.0$"])
    second = dict(pattern="1:4", include=[r"^net\.2$"])
    sparsifiers = [NxMSparsifyCallback(**first, rho=0.05, penalty="decoupled", update_every=2, end_step=8),
                   NxMSparsifyCallback(**second, rho=0.05, penalty="decoupled", update_every=2, end_step=12)]  # fmt: skip
    prunes = [HardPruneCallback(**second, backend="masked"), HardPruneCallback(**first, backend="masked")]
    model = ToyModule()
    toy_trainer(tmp_path, [*sparsifiers, *prunes], max_epochs=2).fit(model, toy_loader())
    assert [t.name for t in prunes[0].targets] == ["net.2"] and [t.name for t in prunes[1].targets] == ["net.0"]
    assert is_nxm(model.net[0].dense_weight(), 2, 4) and is_nxm(model.net[2].dense_weight(), 1, 4)
    assert not is_nxm(model.net[0].dense_weight(), 1, 4)  # cut with its own sparsifier's 2:4, not the other's 1:4


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        (lambda: [HardPruneCallback(include=INCLUDE, after_admm=True)], r"after_admm=True\) follows an NxMSparsify"),
        (
            lambda: [
                NxMSparsifyCallback(pattern="2:4", include=[r"^net\.0$"]),
                NxMSparsifyCallback(pattern="1:4", include=[r"^net\.2$"]),
                HardPruneCallback(include=INCLUDE),
            ],
            "several NxMSparsifyCallbacks and this HardPruneCallback's targets",
        ),
    ],
    ids=["no-sparsifier", "ambiguous"],
)
def test_the_link_to_the_sparsifier_is_checked_before_training(tmp_path: Path, callbacks: Callable, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        toy_trainer(tmp_path, callbacks(), max_epochs=1).fit(ToyModule(), toy_loader())
    with pytest.raises(ValueError, match="after_admm=True prunes when the ADMM phase ends"):
        HardPruneCallback(after_admm=True, at_epoch=1)


def test_a_hard_prune_subscribed_to_a_sparsifier_follows_it(tmp_path: Path) -> None:
    """The explicit link (Python): subscribed with add_end_listener, it follows that sparsifier, whatever its own
    targets (here the default ones, which match neither and would be ambiguous without the link)."""
    sparsifiers = [NxMSparsifyCallback(pattern="2:4", include=[r"^net\.0$"], update_every=2, end_step=8),
                   NxMSparsifyCallback(pattern="1:4", include=[r"^net\.2$"], update_every=2, end_step=8)]  # fmt: skip
    prune = HardPruneCallback(backend="masked")
    sparsifiers[1].add_end_listener(prune)
    sparsifiers[1].add_end_listener(prune)  # again: still one subscription
    assert sparsifiers[1].end_listeners == (prune,) and sparsifiers[0].end_listeners == ()
    model = ToyModule()
    toy_trainer(tmp_path, [*sparsifiers, prune], max_epochs=1).fit(model, toy_loader())
    assert sparsifiers[1].end_listeners == (prune,) and sparsifiers[0].end_listeners == ()
    assert [t.name for t in prune.targets] == ["net.2"] and prune.pruned
    assert is_nxm(model.net[2].dense_weight(), 1, 4) and not isinstance(model.net[0], NxMLinear)


@pytest.mark.parametrize(
    ("prune_args", "subscribed_to", "message"),
    [
        ({"after_admm": False}, [0], r"subscribed \(add_end_listener\) to 1 NxMSparsifyCallback, but it prunes at another"),
        ({"at_epoch": 1}, [0], r"prunes at another point \(after_admm=None, at_epoch=1, at_step=None\)"),
        ({}, [0, 1], r"subscribed \(add_end_listener\) to 2 NxMSparsifyCallbacks, but it cuts once"),
    ],
    ids=["after_admm-false", "at_epoch", "two"],
)
def test_a_subscription_the_hard_prune_cannot_follow_is_refused_at_fit_start(
    tmp_path: Path, prune_args: dict, subscribed_to: list[int], message: str
) -> None:
    sparsifiers = [NxMSparsifyCallback(pattern="2:4", include=[r"^net\.0$"]),
                   NxMSparsifyCallback(pattern="1:4", include=[r"^net\.2$"])]  # fmt: skip
    prune = HardPruneCallback(include=INCLUDE, **prune_args)
    for index in subscribed_to:
        sparsifiers[index].add_end_listener(prune)
    with pytest.raises(ValueError, match=message):
        toy_trainer(tmp_path, [*sparsifiers, prune], max_epochs=1).fit(ToyModule(), toy_loader())


def test_an_end_listener_is_an_admm_end_listener() -> None:
    with pytest.raises(TypeError, match=r"an object with an on_admm_end\(trainer, pl_module, masks\) method"):
        NxMSparsifyCallback().add_end_listener(lambda trainer, pl_module, masks: None)  # type: ignore[arg-type]
    assert isinstance(HardPruneCallback(), ADMMEndListener)


def test_after_admm_false_prunes_at_fit_start_beside_a_sparsifier(tmp_path: Path) -> None:
    prune = HardPruneCallback(include=INCLUDE, after_admm=False, backend="masked")
    sparsify = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, update_every=2)
    model = ToyModule()
    steps: list[bool] = []

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            steps.append(prune.pruned)

    toy_trainer(tmp_path, [sparsify, prune, Probe()], max_epochs=1).fit(model, toy_loader())
    assert steps and all(steps)  # pruned before the first step, not at the end of ADMM


# The two callbacks that export, by name: (export_dir, the pruned layers' include (None: the default)) -> callback.
EXPORTERS: dict[str, Callable[[Path, list[str] | None], Callback]] = {
    "hard_prune": lambda export_dir, include: HardPruneCallback(include=include, export_dir=str(export_dir)),
    "save_pretrained": lambda export_dir, include: SavePretrainedCallback(str(export_dir)),
}


def users_folder(tmp_path: Path) -> Path:
    """A folder of the user's, with a file of theirs, that an export must never replace."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    return mine


def under_a_file(tmp_path: Path) -> Path:
    """A path that cannot be created, as an unwritable parent (chmod is no test when running as root)."""
    (tmp_path / "mine").write_text("my notes")
    return tmp_path / "mine" / "export"


@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
@pytest.mark.parametrize(
    ("export_dir", "message"),
    [(users_folder, "already exists and is not an export of nxm-lightning"),
     (under_a_file, "cannot be written: .*mine is a file, not a folder")],
    ids=["users_folder", "under_a_file"],
)  # fmt: skip
def test_an_export_dir_the_export_would_refuse_stops_the_fit_before_training(
    tmp_path: Path, exporter: str, export_dir: Callable[[Path], Path], message: str
) -> None:
    """Found when fit starts, not after the training; the user's files are left as they were."""
    target = export_dir(tmp_path)
    steps = []
    trainer = toy_trainer(
        tmp_path, [EXPORTERS[exporter](target, INCLUDE), OnStep(lambda tr, module: steps.append(tr.global_step))]
    )
    with pytest.raises(ValueError, match=f"export_dir {re.escape(str(target))} {message}"):
        trainer.fit(ToyModule(), toy_loader())
    assert steps == [] and trainer.global_step == 0
    mine = tmp_path / "mine"
    assert (mine / "notes.txt" if mine.is_dir() else mine).read_text() == "my notes"


class MakeFolder(Callback):
    """Makes a folder of the user's at ``path`` during training, after the export callbacks checked it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.mkdir()
        (self.path / "notes.txt").write_text("my notes")


@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
def test_the_export_at_fit_end_refuses_a_folder_that_appeared_during_training(
    tmp_path: Path, tiny_bert: Path, exporter: str
) -> None:
    """The check at fit start passed (nothing was there); the export's own check finds the folder and keeps it."""
    target = tmp_path / "export"
    module = SequenceClassificationModule(str(tiny_bert), "stsb")
    trainer = toy_trainer(tmp_path, [EXPORTERS[exporter](target, None), MakeFolder(target)], max_epochs=1)
    with pytest.raises(ValueError, match=f"export_dir {re.escape(str(target))} already exists and is not an export"):
        trainer.fit(module, text_loader(tiny_bert))
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "my notes"
