"""Finding NaN and Inf in tensors, with one device sync for many of them. Pure PyTorch: no Lightning here.

A diverged run must stop before a checkpoint or an export holds its weights (``callbacks/finite_guard.py`` and
:func:`~nxm_lightning.sparsity.export.save_pretrained_atomic` call these); a sync per tensor would make checking a
whole model cost more than the checkpoint it protects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def finite_flags(tensors: Iterable[torch.Tensor]) -> list[bool]:
    """Per tensor, whether it holds no NaN or Inf (tensors that are not floating point always do).

    A sum is NaN or Inf when an entry is: one pass and no mask, about 10x faster than ``isfinite().all()`` on a CPU
    (MiniLM's 22.7M weights: 1.6 s the exact way on a busy 2-core machine). A finite tensor whose sum overflows is
    told apart by the exact test, run on those few only. One device sync for all the sums.
    """
    tensors = list(tensors)
    flags = [True] * len(tensors)
    floating = [i for i, tensor in enumerate(tensors) if tensor.is_floating_point()]
    if not floating:
        return flags
    sums = [tensors[i].sum(dtype=torch.promote_types(tensors[i].dtype, torch.float32)) for i in floating]
    device = sums[0].device
    for i, finite in zip(floating, torch.isfinite(torch.stack([s.to(device) for s in sums])).tolist()):
        flags[i] = finite or bool(torch.isfinite(tensors[i]).all())
    return flags


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether no tensor holds a NaN or Inf (one device sync for all of them)."""
    return all(finite_flags(tensors))


def non_finite_names(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the tensors that hold a NaN or Inf, in the mapping's order (e.g. of a state dict)."""
    return [name for name, finite in zip(tensors, finite_flags(tensors.values())) if not finite]


def describe_non_finite(names: list[str], total: int) -> str:
    """``names`` (of ``total`` tensors) in a few words, for an error message: how many, and the first ones."""
    shown = ", ".join(repr(name) for name in names[:3])
    return f"{len(names)} of {total} tensors ({shown}{', ...' if len(names) > 3 else ''})"
