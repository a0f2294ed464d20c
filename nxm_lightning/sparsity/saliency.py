"""What an N:M cut keeps in each group of M: the entries of largest saliency. Pure PyTorch: no Lightning here.

- ``magnitude``: ``|W|`` (NVIDIA's ASP, and the paper's Z-step on ``W + U``).
- ``fisher``: ``F W^2``, F the diagonal empirical Fisher (the mean squared gradient): the second-order estimate of the
  loss increase of zeroing an entry (Optimal Brain Damage), so the task, not only the size, decides what stays.
"""

from __future__ import annotations

from typing import Literal

import torch

from nxm_lightning.sparsity.finite import all_finite
from nxm_lightning.sparsity.nxm import nxm_mask
from nxm_lightning.sparsity.targets import Target

Saliency = Literal["magnitude", "fisher"]
SALIENCIES = ("magnitude", "fisher")


def check_saliency(saliency: str) -> None:
    if saliency not in SALIENCIES:
        raise ValueError(f"saliency={saliency!r} is not one of {SALIENCIES}.")


def fisher_saliency(fisher: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``F value^2`` to rank within each group (``value`` itself while F is all zero: no gradient seen yet).

    F is scaled to a maximum of 1 plus a tiny floor, so that ties in F (all zero for an unused input) are still broken
    by magnitude.
    """
    scale = float(fisher.max())
    if scale <= 0:
        return value
    return (fisher / scale + 1e-12) * value.square()


class SquaredGradientSum:
    """The sum over optimizer steps of each target's squared gradient: a diagonal Fisher estimate for a later cut.

    A step whose gradients hold a NaN or Inf is left out (under ``16-mixed`` the gradient scaler skips exactly those
    steps). Kept in fp32 (or the weight's dtype when wider), read through each target's ``[out, in]`` view.
    """

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.sums = {t.name: torch.zeros(t.shape, dtype=torch.promote_types(t.weight.dtype, torch.float32),
                                         device=t.weight.device) for t in targets}  # fmt: skip
        self.steps = 0

    @torch.no_grad()
    def update(self, grad_scale: float = 1.0) -> bool:
        """Add this step's squared gradients (divided by ``grad_scale``, the factor they still carry); False if left out."""
        grads = {t.name: t.grad for t in self.targets if t.grad is not None}
        if not grads or not all_finite(grads.values()):
            return False
        for name, grad in grads.items():
            grad = grad.to(self.sums[name].dtype) / grad_scale
            self.sums[name].addcmul_(grad, grad)
        self.steps += 1
        return True

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """The N:M mask of each target's current weight ranked by ``F W^2``."""
        return {t.name: nxm_mask(fisher_saliency(self.sums[t.name], t.weight.detach().float()), t.pattern.n, t.pattern.m)
                for t in self.targets}  # fmt: skip

    def state_dict(self) -> dict:
        return {"sums": {name: value.cpu() for name, value in self.sums.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {name: value.to(self.sums[name].device) for name, value in state["sums"].items()}
        self.steps = int(state["steps"])
