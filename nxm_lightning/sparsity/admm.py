"""ADMM state for N:M sparsity (NxMTransformer): the auxiliary Z, the scaled dual U, rho, and the residuals.

Problem, per targeted weight W: minimise task_loss(W) + rho/2 ||W - Z + U||^2 subject to Z being N:M sparse.
- W-step: the user's optimizer, with the penalty's gradient ``rho (W - Z + U)`` either added to ``W.grad``
  (``penalty="gradient"``, the paper's way) or applied as a plain step after the optimizer's
  (``penalty="decoupled"``: ``W -= rho (W - Z + U)``). The decoupled step matters with Adam: Adam normalises each
  coordinate's step to about the learning rate whatever the gradient's size, so a penalty inside the gradient can
  move a weight only about sum(lr) over a whole run, too little to reach N:M in a fine-tuning budget.
- Z-step: ``Z = Proj_NxM(W + U)``; U-step: ``U += W - Z``. ``Proj`` keeps, in each group of M, the N entries of
  largest saliency: ``|W + U|`` (``saliency="magnitude"``, the paper's), or ``F (W + U)^2`` with F a running mean of the
  squared gradients (``saliency="fisher"``: the diagonal-Fisher estimate of the loss increase of zeroing an entry, so
  the task, not only the size, decides which weights stay).

Precision: Z, U and F are kept in fp32 (or the weights' dtype when wider) whatever the weights' dtype, and every
update reads W upcast, so the state is exact under ``bf16-mixed`` / ``16-mixed`` (fp32 weights, half-precision
matmuls). Under ``16-mixed`` the gradients these methods read must be unscaled, or their scale passed as
``grad_scale`` (see :meth:`ADMMState.add_penalty_grad`).

Convergence is measured at every Z-step (:class:`ZStepStats`): the primal residual (how far W is from N:M), the mask
flip rate, and how far the W-step went from where the last update left it towards its target Z - U.

Pure PyTorch: no Lightning here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from nxm_lightning.sparsity.choices import check_choice, choices_of
from nxm_lightning.sparsity.nxm import nxm_mask
from nxm_lightning.sparsity.saliency import FisherEstimate, Saliency, check_saliency
from nxm_lightning.sparsity.targets import Target

PenaltyMode = Literal["gradient", "decoupled"]
PENALTY_MODES = choices_of(PenaltyMode)
# Running mean of the squared gradients for saliency="fisher": about the last 100 optimizer steps.
FISHER_DECAY = 0.99


def state_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype of Z, U and F for a weight of ``weight_dtype``: fp32, or the weight's own when wider (fp64).

    Fp32 because U integrates small violations over the whole phase and F averages squared gradients down to 1e-12:
    in bf16 (8 bits of mantissa) both would lose most of what they add.

    Args:
        weight_dtype: the targeted weight's dtype.
    """
    return torch.promote_types(weight_dtype, torch.float32)


@dataclass
class ZStepStats:
    """What one Z/U update measured (all residuals normalised, so they compare across models)."""

    primal_residual: float  # sum ||W - Z||^2 / sum ||W||^2 after the update
    dual_residual: float  # rho * ||Z - Z_prev|| / ||Z||
    mask_flip_rate: float  # share of mask entries that changed
    rho: float  # the rho the W-step before this update ran with
    # 1 - ||W - Z + U|| / (the same right after the previous update, or initialize()): the share of the way the W-step
    # went towards its target Z - U (1: it solved its subproblem; < 0: it moved away).
    w_step_progress: float = math.nan
    per_layer_primal: dict[str, float] = field(default_factory=dict)

    def converged(self, max_flip_rate: float, max_primal_residual: float) -> bool:
        """The mask has settled and W sits on N:M: a hard prune now costs (almost) nothing."""
        return self.mask_flip_rate <= max_flip_rate and self.primal_residual <= max_primal_residual


def check_admm_args(
    rho: float, rho_factor: float, rho_max: float | None, penalty: PenaltyMode, saliency: Saliency = "magnitude"
) -> None:
    """Raise ``ValueError`` (saying which value and what is valid) unless the arguments make a usable ADMM state.

    Called by :class:`ADMMState` and by constructors that take these arguments, so that a bad config fails when it is
    read, before any model is loaded.
    """
    check_choice("penalty", penalty, PenaltyMode)
    check_saliency(saliency)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho={rho} must be a positive finite number (the paper uses 1e-3 to 1e-2).")
    if not (math.isfinite(rho_factor) and rho_factor >= 1):  # NaN compares False with everything
        raise ValueError(f"rho_factor={rho_factor} must be a finite number >= 1 (1 keeps rho constant).")
    if rho_max is not None and not (math.isfinite(rho_max) and rho_max > 0):
        raise ValueError(f"rho_max={rho_max} must be a positive finite number (the cap of rho's growth), or null.")
    if penalty == "decoupled" and max(rho, rho_max or rho) >= 1:
        raise ValueError(
            f"With penalty='decoupled', rho (={rho}) and rho_max (={rho_max}) are the fraction of (W - Z + U) "
            "removed per step: use values in (0, 1), e.g. rho=0.01, and set rho_max below 1 when rho grows."
        )
    if penalty == "decoupled" and rho_factor > 1 and rho_max is None:
        raise ValueError("With penalty='decoupled' and rho_factor > 1, set rho_max (< 1) to cap the growth.")


class ADMMState:
    """Z, U, masks and rho for a set of targets; everything a resumed run needs is in :meth:`state_dict`.

    Args:
        targets: the layers, from :func:`nxm_lightning.sparsity.targets.select_targets`.
        rho: penalty weight (the initial one when a schedule is set).
        rho_factor: rho is multiplied by this at every Z-step (1.0 keeps it constant) ...
        rho_max: ... up to this cap.
        penalty: ``"gradient"`` or ``"decoupled"`` (see the module docstring).
        saliency: ``"magnitude"`` or ``"fisher"``: what the Z-step and :meth:`cut_masks` rank within each group.
    """

    def __init__(
        self,
        targets: list[Target],
        rho: float,
        rho_factor: float = 1.0,
        rho_max: float | None = None,
        penalty: PenaltyMode = "gradient",
        saliency: Saliency = "magnitude",
    ) -> None:
        check_admm_args(rho, rho_factor, rho_max, penalty, saliency)
        self.targets = targets
        self.rho = float(rho)
        self.rho_factor = float(rho_factor)
        self.rho_max = float(rho_max) if rho_max is not None else None
        self.penalty = penalty
        self.saliency = saliency
        self.zstep_count = 0
        self.z: dict[str, torch.Tensor] = {}
        self.u: dict[str, torch.Tensor] = {}
        self.mask: dict[str, torch.Tensor] = {}
        self.fisher_estimate: FisherEstimate | None = None  # saliency="fisher", during the phase
        # ||W - Z + U|| right after the last update: the distance the next W-step has to cover.
        self.gap_after_update = math.nan

    @property
    def initialized(self) -> bool:
        return bool(self.z)

    @torch.no_grad()
    def initialize(self) -> None:
        """Z = Proj(W), U = 0: the start of the ADMM phase."""
        for t in self.targets:
            w = t.weight.detach().to(state_dtype(t.weight.dtype))
            self.mask[t.name] = nxm_mask(w, t.pattern.n, t.pattern.m)
            self.z[t.name] = w * self.mask[t.name]
            self.u[t.name] = torch.zeros_like(w, memory_format=torch.contiguous_format)
        if self.saliency == "fisher":
            self.fisher_estimate = FisherEstimate(self.targets, decay=FISHER_DECAY)
        self.gap_after_update = self._gap()

    @property
    def fisher(self) -> dict[str, torch.Tensor]:
        """The running mean of each target's squared gradient (``saliency="fisher"``; empty otherwise)."""
        return self.fisher_estimate.values if self.fisher_estimate is not None else {}

    @torch.no_grad()
    def accumulate_fisher(self, grad_scale: float = 1.0) -> bool:
        """F = d F + (1 - d) grad^2 for ``saliency="fisher"``, once per optimizer step; returns whether F was updated.

        A step whose gradients hold a NaN or Inf is left out (see :class:`~nxm_lightning.sparsity.saliency.FisherEstimate`);
        a real divergence is caught on the weights (:meth:`non_finite_layer`).

        Args:
            grad_scale: the factor the gradients still carry (the gradient scaler's scale when the optimizer unscales
                inside its own step; 1 when they are unscaled).
        """
        return self.fisher_estimate.update(grad_scale) if self.fisher_estimate is not None else False

    def _score(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """What the N:M projection ranks: ``|value|``, or ``F value^2`` (+ a tie-break by magnitude) for fisher."""
        return value if self.fisher_estimate is None else self.fisher_estimate.saliency(name, value)

    @torch.no_grad()
    def cut_masks(self) -> dict[str, torch.Tensor]:
        """The N:M masks of the current W under this state's saliency: what a hard prune at this moment keeps."""
        return {t.name: nxm_mask(self._score(t.name, t.weight.detach().float()), t.pattern.n, t.pattern.m)
                for t in self.targets}  # fmt: skip

    @torch.no_grad()
    def _gap(self) -> float:
        """||W - Z + U|| over all targets."""
        return math.sqrt(sum(float(torch.linalg.vector_norm(self._violation(t, t.weight).float())) ** 2
                             for t in self.targets))  # fmt: skip

    @torch.no_grad()
    def add_penalty_grad(self, grad_scale: float = 1.0) -> None:
        """W.grad += rho (W - Z + U) (``penalty="gradient"``): the gradient of rho/2 ||W - Z + U||^2.

        Args:
            grad_scale: the factor the gradients still carry (the gradient scaler's scale when the optimizer unscales
                inside its own step; 1 when they are unscaled): the penalty is scaled alike, so that it comes out of
                the unscaling at its true size.
        """
        for t in self.targets:
            grad = t.grad
            if grad is None:
                continue
            grad.add_(self._violation(t, t.weight), alpha=self.rho * grad_scale)

    @torch.no_grad()
    def apply_decoupled_pull(self) -> None:
        """W -= rho (W - Z + U) (``penalty="decoupled"``): a step of the penalty taken outside the optimizer."""
        for t in self.targets:
            w = t.weight
            w.sub_(self._violation(t, w), alpha=self.rho)

    def _violation(self, t: Target, w: torch.Tensor) -> torch.Tensor:
        z, u = self.z[t.name], self.u[t.name]
        if z.device != w.device:
            self.to(w.device)
            z, u = self.z[t.name], self.u[t.name]
        return (w.detach().to(z.dtype) - z + u).to(w.dtype)

    def penalty_value(self) -> torch.Tensor:
        """rho/2 sum ||W - Z + U||^2 as a differentiable scalar: the reference implementation adds this to the loss."""
        total = sum((t.weight - self.z[t.name] + self.u[t.name]).pow(2).sum() for t in self.targets)
        return 0.5 * self.rho * total  # type: ignore[return-value]

    @torch.no_grad()
    def z_step(self) -> ZStepStats:
        """Z = Proj(W + U); U += W - Z; then the rho schedule (U rescaled so that rho * U, the dual, is kept)."""
        w_sq = z_sq = primal_sq = dual_sq = gap_before_sq = 0.0
        flips = total = 0
        per_layer: dict[str, float] = {}
        for t in self.targets:
            w = t.weight.detach().to(self.z[t.name].dtype)
            z_prev = self.z[t.name]
            z = w + self.u[t.name]
            gap_before_sq += float(torch.linalg.vector_norm(z - z_prev)) ** 2  # ||W - Z + U|| before the update
            mask = nxm_mask(self._score(t.name, z), t.pattern.n, t.pattern.m)
            z.mul_(mask)  # in place: W + U is not needed once projected
            violation = w - z
            self.u[t.name].add_(violation)
            flips += int(torch.count_nonzero(mask ^ self.mask[t.name]))
            total += mask.numel()
            layer_primal = float(torch.linalg.vector_norm(violation)) ** 2
            layer_w = float(torch.linalg.vector_norm(w)) ** 2
            per_layer[t.name] = layer_primal / max(layer_w, 1e-30)
            primal_sq += layer_primal
            w_sq += layer_w
            z_sq += float(torch.linalg.vector_norm(z)) ** 2
            dual_sq += float(torch.linalg.vector_norm(z - z_prev)) ** 2
            self.z[t.name] = z
            self.mask[t.name] = mask
        stats = ZStepStats(
            primal_residual=primal_sq / max(w_sq, 1e-30),
            dual_residual=self.rho * math.sqrt(dual_sq) / max(math.sqrt(z_sq), 1e-30),
            mask_flip_rate=flips / max(total, 1),
            rho=self.rho,
            w_step_progress=1 - math.sqrt(gap_before_sq) / self.gap_after_update if self.gap_after_update > 0 else math.nan,
            per_layer_primal=per_layer,
        )
        self.zstep_count += 1
        self._advance_rho()
        self.gap_after_update = self._gap()
        return stats

    def _advance_rho(self) -> None:
        new_rho = self.rho * self.rho_factor
        if self.rho_max is not None:
            new_rho = min(new_rho, self.rho_max)
        if new_rho != self.rho:
            for u in self.u.values():
                u.mul_(self.rho / new_rho)
            self.rho = new_rho

    def non_finite_layer(self) -> str | None:
        """Name of the first layer whose W, Z or U holds a NaN or Inf, else None."""
        for t in self.targets:
            for tensor in (t.weight, self.z.get(t.name), self.u.get(t.name)):
                if tensor is not None and not bool(torch.isfinite(tensor).all()):
                    return t.name
        return None

    def release(self) -> None:
        """Free Z, U and the masks once the ADMM phase is over."""
        self.z, self.u, self.mask = {}, {}, {}
        self.fisher_estimate = None

    def to(self, device: torch.device) -> None:
        for store in (self.z, self.u, self.mask):
            for name, tensor in store.items():
                store[name] = tensor.to(device)
        if self.fisher_estimate is not None:
            self.fisher_estimate.to(device)

    def state_dict(self) -> dict:
        """Tensors and plain Python values only, so checkpoints load with ``weights_only=True``."""
        return {
            "rho": self.rho,
            "zstep_count": self.zstep_count,
            "gap_after_update": self.gap_after_update,
            "patterns": {t.name: str(t.pattern) for t in self.targets},
            "shapes": {t.name: list(t.shape) for t in self.targets},
            "z": {k: v.cpu() for k, v in self.z.items()},
            "u": {k: v.cpu() for k, v in self.u.items()},
            "mask": {k: v.cpu() for k, v in self.mask.items()},
            "fisher": {k: v.cpu() for k, v in self.fisher.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore; the layers, shapes and patterns must match the current targets (else a ValueError saying which)."""
        check_layers_match(state["patterns"], state["shapes"], self.targets, what="ADMM state")
        self.rho = float(state["rho"])
        self.zstep_count = int(state["zstep_count"])
        device = self.targets[0].module.weight.device
        self.z = {k: v.to(device) for k, v in state["z"].items()}
        self.u = {k: v.to(device) for k, v in state["u"].items()}
        self.mask = {k: v.to(device) for k, v in state["mask"].items()}
        # Checkpoints from before saliency="fisher" existed have neither entry.
        self.gap_after_update = float(state.get("gap_after_update", math.nan))
        if self.saliency != "fisher":
            return
        fisher = state.get("fisher", {})
        if set(fisher) != {t.name for t in self.targets}:
            raise ValueError(
                "This checkpoint's ADMM state has no Fisher estimate (it was written with saliency='magnitude'). "
                "Resume with saliency: magnitude, or start a new run without ckpt_path."
            )
        self.fisher_estimate = FisherEstimate(self.targets, decay=FISHER_DECAY)
        self.fisher_estimate.values = {k: v.to(device) for k, v in fisher.items()}


def check_layers_match(patterns: dict[str, str], shapes: dict[str, list[int]], targets: list[Target], what: str) -> None:
    """Refuse saved per-layer state that belongs to another model or pattern, saying exactly what differs."""
    current = {t.name: (list(t.shape), str(t.pattern)) for t in targets}
    saved = {name: (list(shapes[name]), patterns[name]) for name in patterns}
    if current == saved:
        return
    missing = sorted(set(saved) - set(current))
    extra = sorted(set(current) - set(saved))
    differ = [
        f"{n}: saved {saved[n][0]} {saved[n][1]}, model {current[n][0]} {current[n][1]}"
        for n in sorted(set(saved) & set(current))
        if saved[n] != current[n]
    ]
    details = []
    if missing:
        details.append(f"layers in the checkpoint but not targeted in the model: {missing[:5]}")
    if extra:
        details.append(f"layers targeted in the model but not in the checkpoint: {extra[:5]}")
    if differ:
        details.append("shape or pattern differs: " + "; ".join(differ[:5]))
    raise ValueError(
        f"The {what} in this checkpoint was made for another model or N:M pattern ("
        + "; ".join(details)
        + "). Resume with the same model, include/exclude regexes and pattern, or start a new run without ckpt_path."
    )
