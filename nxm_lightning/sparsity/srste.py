"""SR-STE (Zhou et al., ICLR 2021): train dense weights through their N:M projection, so the mask can keep moving.

The forward pass of each targeted layer computes with ``W * mask(W)`` (the ``n`` largest magnitudes of each group of
``m``, recomputed at every pass); the backward pass hands the gradient straight through to every entry of the dense
``W`` and adds ``decay * W`` on the entries the mask drops (the "sparse-refined" term, which shrinks pruned weights so
that the mask settles). A one-shot cut (ASP) fixes the mask once from the dense model; here a pruned weight whose
gradient keeps pushing it up comes back. Pure PyTorch: no Lightning here.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nxm_lightning.sparsity.nxm import nxm_mask
from nxm_lightning.sparsity.targets import Target

# The paper's lambda_W for its 2:4 runs.
DEFAULT_DECAY = 2e-4


def check_decay(decay: float) -> None:
    if not (isinstance(decay, int | float) and math.isfinite(decay) and decay >= 0):
        raise ValueError(f"decay={decay!r} must be a finite number >= 0 (SR-STE's lambda_W; the paper's is {DEFAULT_DECAY:g}).")


class _SparseRefinedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, n: int, m: int, decay: float) -> torch.Tensor:
        mask = nxm_mask(weight, n, m)
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        weight, mask = ctx.saved_tensors
        return grad + ctx.decay * weight * ~mask, None, None, None


def srste_weight(weight: torch.Tensor, n: int, m: int, decay: float = DEFAULT_DECAY) -> torch.Tensor:
    """``weight``'s N:M projection (N kept of every M consecutive input features of ``[out, in]``, by magnitude), with
    SR-STE's gradient: ``d loss / d projection + decay * weight`` on the dropped entries, the first term on all."""
    return _SparseRefinedSTE.apply(weight, n, m, decay)


class ProjectedForward:
    """While installed, each target's forward computes with :func:`srste_weight` of its weight; the parameters, the
    state dict and a checkpoint stay the dense weights (what training updates, and what a resume needs).

    ``active`` (default True) switches the projection off without uninstalling (after a cut, a projection of N:M
    weights is the weights themselves). A copy of the model (``copy.deepcopy``, e.g. a teacher snapshot of the student)
    computes with its plain weights: this object is shared by copies, not copied, and projects only the modules it
    was installed on.
    """

    def __init__(self, targets: list[Target], decay: float = DEFAULT_DECAY) -> None:
        check_decay(decay)
        self.decay = decay
        self.active = True
        self._targets = {id(t.module): t for t in targets}
        for t in targets:
            if "forward" in vars(t.module):
                raise ValueError(f"Layer {t.name!r} already has its forward replaced (a second SR-STE?); install one.")
            t.module.forward = partial(self._forward, t.module)

    def _forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        target = self._targets.get(id(module))
        if not self.active or target is None or target.module is not module:
            return type(module).forward(module, x)
        weight = srste_weight(target.weight, target.pattern.n, target.pattern.m, self.decay)
        if target.transposed:  # GPT-2's Conv1D: x @ W + b with W stored [in, out]
            out = torch.addmm(module.bias, x.reshape(-1, x.shape[-1]), weight.t())
            return out.reshape(*x.shape[:-1], weight.shape[0])
        return F.linear(x, weight, module.bias)

    def remove(self) -> None:
        """Give every target its class's forward back."""
        for target in self._targets.values():
            vars(target.module).pop("forward", None)
        self._targets = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> ProjectedForward:
        return self
