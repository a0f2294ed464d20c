"""What an N:M cut keeps in each group of M: the entries of largest saliency. Pure PyTorch: no Lightning here.

- ``magnitude``: ``|W|`` (NVIDIA's ASP, and the paper's Z-step on ``W + U``).
- ``fisher``: ``F W^2``, F the diagonal empirical Fisher (the mean squared gradient): the second-order estimate of the
  loss increase of zeroing an entry (Optimal Brain Damage), so the task, not only the size, decides what stays.
"""

from __future__ import annotations

from typing import Literal

import torch

from nxm_lightning.sparsity.choices import check_choice, choices_of
from nxm_lightning.sparsity.finite import all_finite
from nxm_lightning.sparsity.nxm import nxm_mask
from nxm_lightning.sparsity.targets import Target

Saliency = Literal["magnitude", "fisher"]
SALIENCIES = choices_of(Saliency)


def check_saliency(saliency: str) -> None:
    check_choice("saliency", saliency, Saliency)


def fisher_saliency(fisher: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``F value^2`` to rank within each group (``value`` itself while F is all zero: no gradient seen yet).

    F is scaled to a maximum of 1 plus a tiny floor, so that ties in F (all zero for an unused input) are still broken
    by magnitude.
    """
    scale = float(fisher.max())
    if scale <= 0:
        return value
    return (fisher / scale + 1e-12) * value.square()


class FisherEstimate:
    """The diagonal empirical Fisher of each target: its squared gradients, summed or as a running mean.

    The one estimator behind both cuts ranked by Fisher: ``decay=None`` sums every optimizer step's squared gradient
    (``HardPruneCallback(saliency="fisher")``: every step before the cut counts alike); ``decay=d`` keeps the running
    mean F = d F + (1 - d) g^2 (the ADMM phase's Z-steps: about the last 1 / (1 - d) steps, since the weights move).

    A step whose gradients hold a NaN or Inf is left out: under ``16-mixed`` the gradient scaler skips exactly those
    steps (its scale was too large), and one Inf would otherwise stay in F for good; a real divergence is caught on the
    weights. Kept in fp32 (or the weight's dtype when wider): F averages squared gradients down to 1e-12, which bf16 or
    fp16 would lose. Read through each target's ``[out, in]`` view.

    Args:
        targets: the layers whose gradients are read.
        decay: None to sum, else the running mean's decay in [0, 1).
    """

    def __init__(self, targets: list[Target], decay: float | None = None) -> None:
        if decay is not None and not 0 <= decay < 1:
            raise ValueError(f"decay={decay} must be in [0, 1) (a running mean), or None (a sum).")
        self.targets = targets
        self.decay = decay
        self.values = {t.name: torch.zeros(t.shape, dtype=torch.promote_types(t.weight.dtype, torch.float32),
                                           device=t.weight.device) for t in targets}  # fmt: skip
        self.steps = 0

    @torch.no_grad()
    def update(self, grad_scale: float = 1.0) -> bool:
        """Add this step's squared gradients, divided by ``grad_scale`` (the factor they still carry: the gradient
        scaler's scale when the optimizer unscales inside its own step; 1 when they are unscaled); False if left out."""
        grads = {t.name: t.grad for t in self.targets if t.grad is not None}
        if not grads or not all_finite(grads.values()):
            return False
        for name, grad in grads.items():
            grad = grad.to(self.values[name].dtype) / grad_scale
            if self.decay is None:
                self.values[name].addcmul_(grad, grad)
            else:
                self.values[name].mul_(self.decay).addcmul_(grad, grad, value=1 - self.decay)
        self.steps += 1
        return True

    def saliency(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """What a cut of ``name`` ranks: ``F value^2`` (see :func:`fisher_saliency`)."""
        return fisher_saliency(self.values[name], value)

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """The N:M mask of each target's current weight ranked by ``F W^2``."""
        return {t.name: nxm_mask(self.saliency(t.name, t.weight.detach().float()), t.pattern.n, t.pattern.m)
                for t in self.targets}  # fmt: skip

    def to(self, device: torch.device) -> None:
        self.values = {name: value.to(device) for name, value in self.values.items()}

    def state_dict(self) -> dict:
        return {"sums": {name: value.cpu() for name, value in self.values.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        device = self.targets[0].weight.device if self.targets else torch.device("cpu")
        self.values = {name: value.to(device) for name, value in state["sums"].items()}
        self.steps = int(state["steps"])
