"""N:M semi-structured sparsity: pattern parsing, exact masks, projection, compliance.

Notation: ``N:M`` as NVIDIA writes it, *N kept of every M* consecutive weights (``2:4`` keeps 2 of 4). The NxMTransformer
paper writes the same pattern the other way round ("NxM: keep M of every N"). Groups run along the *input* features of a
Linear weight ``[out, in]``: each row is cut into ``in / M`` groups of M consecutive entries, the layout of sparse tensor
cores and of ``torch.sparse.to_sparse_semi_structured``.

Pure PyTorch: no Lightning here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# Above this group size the pairwise rank (M passes over the weight) loses to one stable sort.
_PAIRWISE_MAX_M = 16
_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class NxMPattern:
    """An N:M pattern: keep ``n`` of every ``m`` consecutive input features (NVIDIA's order; 2:4 keeps 2 of 4)."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 0 < self.n < self.m:
            raise ValueError(
                f"Invalid N:M pattern {self.n}:{self.m}: need whole numbers 0 < N < M (N kept of every M, "
                "NVIDIA's order), e.g. '2:4', '1:4' or '4:8'."
            )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def density(self) -> float:
        return self.n / self.m

    @classmethod
    def parse(cls, spec: str | NxMPattern) -> NxMPattern:
        """Parse ``"N:M"`` (N kept of every M). Raises ``ValueError`` naming the bad string and valid examples."""
        if isinstance(spec, NxMPattern):
            return spec
        match = _PATTERN_RE.match(str(spec))
        if match is None:
            raise ValueError(
                f"Invalid N:M pattern {spec!r}: write it as 'N:M' with whole numbers, N kept of every M consecutive "
                "weights (NVIDIA's order), e.g. '2:4', '1:4' or '4:8'."
            )
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            hint = f" (did you mean '{m}:{n}'? N is the number kept and comes first)" if 0 < m < n else ""
            raise ValueError(f"Invalid N:M pattern {spec!r}: need 0 < N < M{hint}, e.g. '2:4', '1:4' or '4:8'.")
        return cls(n, m)


def _groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View a 2-D weight ``[out, in]`` as ``[out * in / m, m]`` groups of consecutive input features."""
    if weight.dim() != 2:
        raise ValueError(
            f"N:M sparsity applies to 2-D weights [out_features, in_features]; got a {weight.dim()}-D tensor of shape "
            f"{tuple(weight.shape)}. Target nn.Linear layers (or reshape the weight to 2-D first)."
        )
    if weight.shape[1] % m:
        raise ValueError(
            f"in_features={weight.shape[1]} of a weight of shape {tuple(weight.shape)} is not a multiple of M={m}, "
            "so it cannot be cut into whole N:M groups. Exclude this layer or choose an M that divides it."
        )
    return weight.reshape(-1, m)


def nxm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping exactly the ``n`` largest magnitudes of each group of ``m`` consecutive input features.

    Args:
        weight: a 2-D tensor ``[out, in]`` with ``in`` a multiple of ``m``.
        n: how many to keep per group (N kept of M, NVIDIA's order).
        m: the group size.

    Ties are broken deterministically: among equal magnitudes the lower index is kept, so every group keeps exactly
    ``n`` entries whatever the values (the research code's quantile threshold kept fewer under ties). NaN counts as
    the largest magnitude, so a diverged entry is never silently hidden by the mask.

    Example::

        >>> nxm_mask(torch.tensor([[0.1, -3.0, 2.0, 0.0]]), 2, 4)
        tensor([[False,  True,  True, False]])
    """
    NxMPattern(n, m)
    groups = _groups(weight, m).detach().abs()
    if groups.is_floating_point():
        groups = torch.nan_to_num(groups, nan=float("inf"))
    if m <= _PAIRWISE_MAX_M:
        # rank[i] = how many entries of the group beat entry i (larger, or equal and earlier); keep rank < n.
        # m vectorised passes over [groups, m]: faster than topk/sort for small m and exact under ties.
        index = torch.arange(m, device=weight.device)
        rank = torch.zeros(groups.shape, dtype=torch.uint8 if m < 256 else torch.int32, device=weight.device)
        for j in range(m):
            other = groups[:, j : j + 1]
            rank += (other > groups) | ((other == groups) & (index > j))
        keep = rank < n
    else:
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
        keep.scatter_(1, order, True)
    return keep.reshape(weight.shape)


def nxm_project(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Euclidean projection onto the N:M set: ``weight`` with all but the ``n`` largest of each group zeroed."""
    return weight * nxm_mask(weight, n, m)


def is_nxm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive input features has at most ``n`` non-zeros."""
    return first_violation(weight, n, m) is None


def first_violation(weight: torch.Tensor, n: int, m: int) -> tuple[int, int, int] | None:
    """``(row, first input column of the group, non-zeros in it)`` of the first group with more than ``n`` non-zeros."""
    NxMPattern(n, m)
    nonzeros = (_groups(weight, m) != 0).sum(dim=1)
    bad = torch.nonzero(nonzeros > n)
    if bad.numel() == 0:
        return None
    group = int(bad[0, 0])
    groups_per_row = weight.shape[1] // m
    return group // groups_per_row, (group % groups_per_row) * m, int(nonzeros[group])
