"""Mixed precision (issue 13): the ADMM state stays fp32, the gradient penalty and the Fisher estimate see true
gradients under the fp16 gradient scaler, the sparse backend's dtype follows the trainer's precision, fp16 weights are
refused, bf16 weights train, and the whole pipeline runs in bf16-mixed on a tiny BERT (ADMM, cut, masked fine-tuning,
distillation, export, verify, exact resume).

This machine's CPU has no native bf16 (no avx512_bf16 / AMX): bf16 autocast is emulated and slow there, so the models
are tiny and the runs short. CPU tests emulate ``16-mixed`` with ``torch.amp.GradScaler("cpu")`` through Lightning's own
``MixedPrecision`` plugin; the ``cuda`` tests run the real thing where a GPU exists.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import KillAfter, Killed, ToyModule, save_tiny_bert, text_loader, toy_loader, toy_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from transformers import AutoModelForSequenceClassification

import callbacks.hard_prune as hard_prune_module
from callbacks import HardPruneCallback, NxMSparsifyCallback, RNGStateCallback
from nxm_lightning import DistillationModule, SequenceClassificationModule
from nxm_lightning.sparsity.admm import FISHER_DECAY, ADMMState
from nxm_lightning.sparsity.nxm import NxMPattern, is_nxm, nxm_mask, nxm_project
from nxm_lightning.sparsity.precision import compute_dtype, cpu_flags, has_fast_bf16_cpu, recommended_precision
from nxm_lightning.sparsity.sparse_linear import NxMLinear, select_backend, semi_structured_unavailable_reason
from nxm_lightning.sparsity.targets import Target, select_targets
from nxm_lightning.sparsity.verify import verify

INCLUDE = [r"^net\.[02]$"]  # the toy's two hidden Linear layers
TOY_TARGETS = ("net.0", "net.2")
P24 = NxMPattern(2, 4)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# ---- the ADMM state: fp32 whatever the weights' dtype ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_admm_state_stays_fp32_for_16_bit_weights(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 4).to(dtype)
    admm = ADMMState([Target("0", layer, P24)], rho=0.1, penalty="gradient", saliency="fisher")
    admm.initialize()
    weight = layer.weight.detach().float()
    assert torch.equal(admm.z["0"], weight * nxm_mask(weight, 2, 4))  # Z = Proj(W), exact
    # A gradient of 1e-4 gives F = 0.01 * 1e-8 = 1e-10: below fp16's smallest number (6e-8), so an fp16 F would be 0.
    layer.weight.grad = torch.full((4, 8), 1e-4, dtype=dtype)
    assert admm.accumulate_fisher()
    assert torch.allclose(admm.fisher["0"], torch.full((4, 8), 1e-10), rtol=1e-2)
    admm.add_penalty_grad()
    assert layer.weight.grad.dtype == dtype  # the penalty lands in the gradient's own dtype
    admm.z_step()
    state = admm.state_dict()
    for store in ("z", "u", "fisher"):
        assert getattr(admm, store)["0"].dtype == torch.float32
        assert state[store]["0"].dtype == torch.float32


def test_grad_scale_is_taken_out_of_penalty_and_fisher() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    admm = ADMMState([Target("0", layer, P24)], rho=0.5, penalty="gradient", saliency="fisher")
    admm.initialize()
    true_grad, scale = torch.randn(4, 8), 2.0**12
    layer.weight.grad = true_grad * scale  # what a fused optimizer's hook sees under 16-mixed
    admm.accumulate_fisher(grad_scale=scale)
    assert torch.allclose(admm.fisher["0"], (1 - FISHER_DECAY) * true_grad**2)
    admm.add_penalty_grad(grad_scale=scale)
    violation = layer.weight.detach() - admm.z["0"] + admm.u["0"]
    assert torch.allclose(layer.weight.grad / scale, true_grad + 0.5 * violation)


def test_fisher_leaves_out_a_step_with_non_finite_gradients() -> None:
    layer = nn.Linear(8, 4)
    admm = ADMMState([Target("0", layer, P24)], rho=0.1, saliency="fisher")
    admm.initialize()
    layer.weight.grad = torch.ones(4, 8)
    layer.weight.grad[1, 2] = float("inf")  # the gradient scaler's overflow: it skips this step
    assert not admm.accumulate_fisher()
    assert torch.equal(admm.fisher["0"], torch.zeros(4, 8))
    layer.weight.grad = torch.ones(4, 8)
    assert admm.accumulate_fisher()
    assert torch.allclose(admm.fisher["0"], torch.full((4, 8), 1 - FISHER_DECAY))


# ---- 16-mixed: where the gradient scaler leaves the gradients --------------------------------------------------------


class SGDToy(ToyModule):
    """The toy with plain SGD, so that an optimizer step is exactly W -= lr * grad (``fused``: unscales in its step)."""

    def __init__(self, fused: bool) -> None:
        super().__init__(lr=0.1)
        self.fused = fused

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, fused=self.fused)


def fp16_mixed_trainer(tmp_path: Path, callbacks: list, device: str, init_scale: float) -> pl.Trainer:
    """One optimizer step under Lightning's ``16-mixed`` plugin with a GradScaler starting at ``init_scale``."""
    scaler = torch.amp.GradScaler(device, init_scale=init_scale)
    accelerator = "gpu" if device == "cuda" else "cpu"
    return toy_trainer(
        tmp_path, callbacks, max_steps=1, accelerator=accelerator, plugins=[MixedPrecision("16-mixed", device, scaler)]
    )


def fp16_task_gradients(model: pl.LightningModule, batch: tuple[torch.Tensor, ...], device: str) -> dict[str, torch.Tensor]:
    """The true (never scaled) gradients of the toy's loss under fp16 autocast, for the first batch."""
    reference = copy.deepcopy(model).to(device)
    with torch.autocast(device, dtype=torch.float16):
        loss = reference.training_step(tuple(t.to(device) for t in batch), 0)
    grads = torch.autograd.grad(loss, [reference.get_submodule(name).weight for name in TOY_TARGETS])
    return dict(zip(TOY_TARGETS, grads))


@pytest.mark.filterwarnings("ignore:NxMSparsifyCallback")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [False, True], ids=["lightning-unscales", "fused-optimizer-unscales"])
def test_16_mixed_penalty_and_fisher_use_true_gradients(tmp_path: Path, device: str, fused: bool) -> None:
    # Lightning unscales before on_before_optimizer_step, except for fused optimizers, which get scaled gradients
    # there: either way, the step must be W -= lr * (true task gradient + rho (W - Z + U)), and F must hold true ones.
    torch.manual_seed(0)
    model = SGDToy(fused)
    loader = toy_loader(8)
    task_grad = fp16_task_gradients(model, next(iter(loader)), device)
    before = {name: model.get_submodule(name).weight.detach().clone() for name in TOY_TARGETS}
    sparsify = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, rho=0.5, rho_factor=1.0, penalty="gradient", saliency="fisher")
    trainer = fp16_mixed_trainer(tmp_path, [sparsify], device, init_scale=2.0**12)
    trainer.fit(model, loader)
    assert trainer.precision_plugin.scaler.get_scale() == 2.0**12  # no overflow: the step was taken
    for name, weight in before.items():  # compared on the CPU (Lightning moves the model back there after fit)
        grad = task_grad[name].cpu()
        violation = weight - weight * nxm_mask(weight, 2, 4)  # W - Z + U at the first step: Z = Proj(W), U = 0
        expected = weight - 0.1 * (grad + 0.5 * violation)
        assert torch.allclose(model.get_submodule(name).weight.detach().cpu(), expected, rtol=1e-3, atol=1e-5), name
        fisher = sparsify.admm.fisher[name].cpu()  # type: ignore[union-attr]
        assert torch.allclose(fisher, (1 - FISHER_DECAY) * grad**2, rtol=1e-3, atol=1e-12), name


@pytest.mark.filterwarnings("ignore:NxMSparsifyCallback")
@pytest.mark.parametrize("device", DEVICES)
def test_16_mixed_overflow_step_is_left_out_of_the_fisher(tmp_path: Path, device: str) -> None:
    torch.manual_seed(0)
    model = SGDToy(fused=False)
    before = {name: model.get_submodule(name).weight.detach().clone() for name in TOY_TARGETS}
    sparsify = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, rho=0.5, rho_factor=1.0, penalty="gradient", saliency="fisher")
    trainer = fp16_mixed_trainer(tmp_path, [sparsify], device, init_scale=2.0**100)  # fp16 gradients overflow
    trainer.fit(model, toy_loader(8))
    assert trainer.precision_plugin.scaler.get_scale() == 2.0**99  # the scaler saw the Inf and backed off
    for name, weight in before.items():
        assert torch.equal(model.get_submodule(name).weight.detach().cpu(), weight)  # ... and skipped the step
        assert torch.equal(sparsify.admm.fisher[name].cpu(), torch.zeros_like(weight))  # type: ignore[union-attr]


# ---- the sparse backend's dtype follows the precision ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "capability", "backend"),
    [
        ("32-true", (8, 0), "masked"),  # fp32 matmuls: sparse tensor cores take only fp16/bf16/int8
        ("64-true", (9, 0), "masked"),
        ("bf16-mixed", (8, 0), "semi_structured"),  # fp32 weights, bf16 matmuls: served in bf16
        ("16-mixed", (8, 6), "semi_structured"),
        ("bf16-true", (9, 0), "semi_structured"),
        ("16-mixed", (7, 5), "masked"),  # no sparse tensor cores before Ampere, whatever the dtype
    ],
)
def test_semi_structured_dtype_follows_the_precision(precision: str, capability: tuple[int, int], backend: str) -> None:
    weight = torch.zeros(64, 128)  # fp32, as trained under *-mixed
    dtype = compute_dtype(precision)
    assert select_backend("auto", weight, P24, cuda_capability=capability, compute_dtype=dtype) == backend
    if precision in ("32-true", "64-true"):
        assert dtype is None
        assert "float32 is not one of fp16/bf16/int8" in semi_structured_unavailable_reason(weight, P24, capability)
    else:
        assert dtype == (torch.bfloat16 if precision.startswith("bf16") else torch.float16)


def test_semi_structured_forward_follows_nn_linear_dtypes() -> None:
    # A dense bf16 weight stands in for the sparse one (no sparse kernels on a CPU): same dtype rules.
    torch.manual_seed(0)
    layer = NxMLinear(8, 4, P24, "semi_structured")
    layer.weight = nn.Parameter(torch.randn(4, 8).bfloat16(), requires_grad=False)
    layer.bias = nn.Parameter(torch.randn(4).bfloat16(), requires_grad=False)
    x = torch.randn(3, 8)  # fp32, as LayerNorm's output is even under autocast
    expected = nn.functional.linear(x.bfloat16(), layer.weight, layer.bias)
    out = layer(x)
    assert out.dtype == torch.float32 and torch.equal(out, expected.float())  # outside autocast: the input's dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)  # under autocast: the autocast dtype


@pytest.mark.parametrize(("precision", "dtype"), [("32-true", None), ("bf16-mixed", torch.bfloat16)])
def test_hard_prune_routes_in_the_trainers_compute_dtype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, dtype: torch.dtype | None
) -> None:
    seen: list[torch.dtype | None] = []
    build = NxMLinear.from_linear

    def spy(linear, pattern, backend="auto", strict=False, compute_dtype=None, transposed=False) -> NxMLinear:  # noqa: ANN001
        seen.append(compute_dtype)
        return build(linear, pattern, backend, strict, compute_dtype, transposed)

    monkeypatch.setattr(hard_prune_module.NxMLinear, "from_linear", spy)
    model = ToyModule()
    toy_trainer(tmp_path, [HardPruneCallback(include=INCLUDE)], max_steps=2, precision=precision).fit(model, toy_loader())
    assert seen == [dtype, dtype]
    assert [model.get_submodule(name).backend for name in TOY_TARGETS] == ["masked", "masked"]  # no sparse cores on CPU


# ---- 16-bit weights: fp16 refused, bf16 trained ----------------------------------------------------------------------


def test_why_fp16_weights_are_refused() -> None:
    # Adam's eps (1e-8) is 0 in fp16: a zero gradient (every pruned weight after the cut) gives 0/0. bf16 has fp32's
    # exponent range. If this ever stops holding, refuse_fp16_weights can go.
    for dtype, finite in ((torch.float16, False), (torch.bfloat16, True)):
        weight = nn.Parameter(torch.ones(4, dtype=dtype))
        weight.grad = torch.zeros(4, dtype=dtype)
        torch.optim.AdamW([weight], lr=1e-3).step()
        assert bool(torch.isfinite(weight).all()) == finite, dtype


@pytest.mark.parametrize(
    ("precision", "half_by_hand", "callback"),
    [("16-true", False, "sparsify"), ("16-true", False, "prune"), ("32-true", True, "sparsify"), ("32-true", True, "prune")],
)
def test_fp16_weights_are_refused_before_the_first_step(
    tmp_path: Path, precision: str, half_by_hand: bool, callback: str
) -> None:
    steps: list[int] = []

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            steps.append(trainer.global_step)

    chosen = NxMSparsifyCallback(pattern="2:4", include=INCLUDE) if callback == "sparsify" else HardPruneCallback(include=INCLUDE)
    model = ToyModule().half() if half_by_hand else ToyModule()
    with pytest.raises(ValueError, match=r"cannot fit fp16 weights .* Use precision '16-mixed' .* or 'bf16-mixed'"):
        toy_trainer(tmp_path, [chosen, Probe()], precision=precision).fit(model, toy_loader())
    assert steps == []


def test_hard_prune_validates_in_16_true(tmp_path: Path) -> None:
    # The refusal is for fitting only: evaluating an N:M model in fp16 is what sparse tensor cores are for.
    model = ToyModule()
    toy_trainer(tmp_path, [HardPruneCallback(include=INCLUDE)], max_steps=2).fit(model, toy_loader())
    trainer = toy_trainer(tmp_path, [HardPruneCallback(include=INCLUDE)], precision="16-true")
    (metrics,) = trainer.validate(model, toy_loader(seed=1))
    assert torch.isfinite(torch.tensor(metrics["val/score"]))
    assert model.net[0].dense_weight().dtype == torch.float16 and is_nxm(model.net[0].dense_weight(), 2, 4)


def test_bf16_true_weights_converge_with_an_fp32_admm_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sparsify = NxMSparsifyCallback(include=INCLUDE, rho=0.01, rho_max=0.5, update_every=4, start_step=16, end_step=96)
    dtypes: set[tuple[torch.dtype, torch.dtype, torch.dtype]] = set()

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if sparsify.active:
                admm = sparsify.admm
                dtypes.add((pl_module.net[0].weight.dtype, admm.z["net.0"].dtype, admm.u["net.0"].dtype))

    model = ToyModule()
    trainer = toy_trainer(
        tmp_path, [sparsify, HardPruneCallback(backend="masked"), Probe()], max_epochs=14, precision="bf16-true"
    )
    trainer.fit(model, toy_loader())
    assert dtypes == {(torch.bfloat16, torch.float32, torch.float32)}
    assert sparsify.verdict().startswith("Converged"), sparsify.verdict()
    for name in TOY_TARGETS:
        weight = model.get_submodule(name).dense_weight()
        assert weight.dtype == torch.bfloat16 and is_nxm(weight, 2, 4)


# ---- which precision where --------------------------------------------------------------------------------------------


def test_fast_bf16_cpu_is_read_from_the_cpu_flags() -> None:
    zen2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
    sapphire_rapids = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert cpu_flags(zen2) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert not has_fast_bf16_cpu(cpu_flags(zen2))
    assert has_fast_bf16_cpu(cpu_flags(sapphire_rapids))
    assert not has_fast_bf16_cpu(cpu_flags(""))  # no /proc/cpuinfo (macOS): fp32, the safe choice


@pytest.mark.parametrize(
    ("capability", "fast_cpu", "precision"),
    [((8, 0), False, "bf16-mixed"), ((7, 5), True, "16-mixed"), (None, True, "bf16-mixed"), (None, False, "32-true")],
)
def test_recommended_precision(capability: tuple[int, int] | None, fast_cpu: bool, precision: str) -> None:
    assert recommended_precision(capability, fast_cpu)[0] == precision


# ---- the whole pipeline in bf16-mixed on a tiny BERT ----------------------------------------------------------------


def pipeline_callbacks(out: Path) -> list[Callback]:
    """configs/glue.yaml in small: dense epoch 0, ADMM (fisher saliency) from epoch 1 to the end of epoch 2 (or until
    converged), cut, masked fine-tuning in epoch 3, export; checkpoints and RNG states for an exact resume."""
    return [
        NxMSparsifyCallback(pattern="2:4", rho=0.05, rho_max=0.5, update_every=2, start_epoch=1, end_epoch=3, saliency="fisher"),
        HardPruneCallback(backend="auto", export_dir=str(out / "export")),
        RNGStateCallback(),
        ModelCheckpoint(dirpath=out / "ckpt", save_last=True),
    ]


def pipeline_module(bert: Path) -> DistillationModule:
    pl.seed_everything(0)
    # The main job's module: the teacher is the student as it was at the start of epoch 1, its logits cached.
    return DistillationModule(str(bert), teacher_snapshot_epoch=1, student_init="pretrained", learning_rate=1e-3,
                              cache_teacher_logits=True)  # fmt: skip


def pipeline_fit(bert: Path, out: Path, extra: list[Callback], ckpt_path: Path | None = None) -> DistillationModule:
    module = pipeline_module(bert)
    trainer = toy_trainer(out, pipeline_callbacks(out) + extra, max_epochs=4, precision="bf16-mixed")
    trainer.fit(module, text_loader(bert, n=32, shuffle=True), text_loader(bert, n=8), ckpt_path=ckpt_path)
    return module


class PipelineProbe(Callback):
    """Records the classifier's output dtypes (autocast on?), the ADMM state's dtypes and the weights at the cut."""

    def __init__(self) -> None:
        self.output_dtypes: set[torch.dtype] = set()
        self.state_dtypes: set[torch.dtype] = set()
        self.at_cut: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        pl_module.model.classifier.register_forward_hook(lambda module, args, out: self.output_dtypes.add(out.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        sparsify, prune = trainer.callbacks[0], trainer.callbacks[1]
        if sparsify.active:
            self.state_dtypes |= {t.dtype for store in (sparsify.admm.z, sparsify.admm.u, sparsify.admm.fisher)
                                  for t in store.values()}  # fmt: skip
        if prune.pruned and not self.at_cut:
            self.at_cut = {t.name: t.weight.detach().clone() for t in prune.targets}


@pytest.fixture(scope="module")
def bf16_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bf16_bert"))


@pytest.fixture(scope="module")
def bf16_pipeline(tmp_path_factory: pytest.TempPathFactory, bf16_bert: Path) -> tuple[DistillationModule, PipelineProbe, Path]:
    out = tmp_path_factory.mktemp("bf16_pipeline")
    probe = PipelineProbe()
    module = pipeline_fit(bf16_bert, out, [probe])
    return module, probe, out


def test_bf16_mixed_pipeline_trains_in_bf16_and_cuts_exactly(bf16_pipeline: tuple) -> None:
    module, probe, _ = bf16_pipeline
    assert probe.output_dtypes == {torch.bfloat16}  # every forward, training and validation, ran under bf16 autocast
    assert probe.state_dtypes == {torch.float32}
    assert probe.at_cut, "the hard prune never happened"
    for name, at_cut in probe.at_cut.items():
        layer = module.get_submodule(name)
        assert isinstance(layer, NxMLinear) and layer.backend == "masked"  # auto on CPU
        final = layer.dense_weight()
        assert final.dtype == torch.float32 and is_nxm(final, 2, 4)
        assert torch.equal(final == 0, at_cut == 0)  # the masked fine-tuning kept every zero ...
    assert any(
        not torch.equal(module.get_submodule(name).dense_weight(), w) for name, w in probe.at_cut.items()
    )  # ... and trained


def test_bf16_mixed_export_verifies_and_loads_in_fp32_and_fp16(bf16_pipeline: tuple) -> None:
    module, probe, out = bf16_pipeline
    export = out / "export"
    assert verify(export) == []
    fp32 = AutoModelForSequenceClassification.from_pretrained(export, dtype=torch.float32)
    fp16 = AutoModelForSequenceClassification.from_pretrained(export, dtype=torch.float16)
    fp32_weights, fp16_weights = fp32.state_dict(), fp16.state_dict()
    for name in probe.at_cut:
        key = f"{name.removeprefix('model.')}.weight"
        trained = module.get_submodule(name).dense_weight()
        assert torch.equal(fp32_weights[key], trained)  # exact
        assert fp16_weights[key].dtype == torch.float16 and torch.equal(fp16_weights[key], trained.half())
        assert is_nxm(fp16_weights[key], 2, 4)


def test_evaluate_score_runs_in_the_trainers_precision(bf16_pipeline: tuple, bf16_bert: Path) -> None:
    module, probe, _ = bf16_pipeline  # still attached to its bf16-mixed trainer (prune/score_* used it in fit)
    probe.output_dtypes.clear()
    module.evaluate_score(text_loader(bf16_bert, n=8))
    assert probe.output_dtypes == {torch.bfloat16}
    detached = SequenceClassificationModule(str(bf16_bert))  # no trainer: plain fp32
    detached.model.classifier.register_forward_hook(lambda m, args, out: probe.output_dtypes.add(out.dtype))
    probe.output_dtypes.clear()
    detached.evaluate_score(text_loader(bf16_bert, n=8))
    assert probe.output_dtypes == {torch.float32}


def test_bf16_mixed_resume_during_admm_is_exact(bf16_pipeline: tuple, bf16_bert: Path, tmp_path: Path) -> None:
    straight, probe, _ = bf16_pipeline
    with pytest.raises(Killed):  # stopped at the start of epoch 2, in the middle of the ADMM phase
        pipeline_fit(bf16_bert, tmp_path, [KillAfter(2)])
    resumed = pipeline_fit(bf16_bert, tmp_path, [], ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for name in probe.at_cut:
        assert torch.allclose(resumed.get_submodule(name).dense_weight(), straight.get_submodule(name).dense_weight(), atol=1e-6)
    assert torch.allclose(resumed.model.classifier.weight, straight.model.classifier.weight, atol=1e-6)


# ---- CUDA: sparse tensor cores in the compute dtype ----------------------------------------------------------------


@pytest.mark.cuda
def test_bf16_mixed_validation_on_gpu_serves_semi_structured_in_bf16(tmp_path: Path) -> None:
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("no sparse tensor cores (compute capability < 8.0)")
    bert = save_tiny_bert(tmp_path / "bert", hidden=64)  # 64x64, 128x64, 64x128: within the kernels' shape limits
    module = SequenceClassificationModule(str(bert))
    with torch.no_grad():  # a pruned fp32 model, as a bf16-mixed fit leaves it
        for t in select_targets(module.model, "2:4"):
            t.module.weight.copy_(nxm_project(t.module.weight, 2, 4))
    dense = copy.deepcopy(module.model).cuda().eval()
    batch = {k: v.cuda() for k, v in next(iter(text_loader(bert, n=16))).items() if k != "labels"}
    seen: dict[str, object] = {}

    class Probe(Callback):
        def on_validation_end(self, trainer, pl_module) -> None:  # noqa: ANN001  (still on the GPU here)
            seen["layers"] = {(m.backend, m.weight.dtype) for m in pl_module.modules() if isinstance(m, NxMLinear)}
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                seen["sparse"], seen["dense"] = pl_module.eval()(**batch).logits.float(), dense(**batch).logits.float()

    prune = HardPruneCallback(backend="auto", backend_strict=True)
    toy_trainer(tmp_path, [prune, Probe()], accelerator="gpu", precision="bf16-mixed").validate(module, text_loader(bert, n=16))
    assert seen["layers"] == {("semi_structured", torch.bfloat16)}  # fp32 weights, served in the precision's bf16
    assert torch.allclose(seen["sparse"], seen["dense"], atol=5e-2, rtol=5e-2)
