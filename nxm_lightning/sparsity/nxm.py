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

# Above this group size the pairwise rank (M(M-1)/2 column comparisons) loses to one stable sort.
_PAIRWISE_MAX_M = 16
# On CPU the pairwise rank works through a weight in slices of about this many elements.
_CHUNK_ELEMENTS = 1 << 22
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
    groups = _groups(weight, m).detach()
    if m > _PAIRWISE_MAX_M:
        magnitude = _magnitude(groups)
        order = torch.sort(magnitude, dim=1, descending=True, stable=True).indices[:, :n]
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
        keep.scatter_(1, order, True)
        return keep.reshape(weight.shape)
    keep = torch.empty(groups.shape, dtype=torch.bool, device=weight.device)
    # On CPU, bound the temporaries (and keep them nearer the cache) by working through big weights in slices.
    rows = max(1, _CHUNK_ELEMENTS // m) if weight.device.type == "cpu" else max(1, groups.shape[0])
    for start in range(0, groups.shape[0], rows):
        if (n, m) == (2, 4):
            _keep_2_of_4(groups[start : start + rows], keep[start : start + rows])
        else:
            _pairwise_keep(groups[start : start + rows], n, keep[start : start + rows])
    return keep.reshape(weight.shape)


def _magnitude(groups: torch.Tensor) -> torch.Tensor:
    """``|groups|`` (a new tensor) with NaN as +inf, so that a diverged entry ranks as the largest."""
    magnitude = groups.abs()
    if magnitude.is_floating_point():
        torch.nan_to_num_(magnitude, nan=float("inf"))
    return magnitude


def _pairwise_keep(groups: torch.Tensor, n: int, out: torch.Tensor) -> None:
    """Write into ``out`` the mask keeping the ``n`` largest of each row of ``groups`` ``[rows, m]`` (ties: lower index).

    rank[i] = how many entries of the group beat entry i (larger, or equal and earlier); keep rank < n. One comparison
    per pair of columns, i < j: ``x_i >= x_j`` means i beats j, its negation (no NaN left) that j beats i. That is
    m(m-1)/2 comparisons on ``[rows]`` columns instead of m passes over the whole ``[rows, m]`` block.
    """
    m = groups.shape[1]
    columns = _magnitude(groups).unbind(1)
    ranks = torch.zeros((m, groups.shape[0]), dtype=torch.uint8, device=groups.device)
    beats = torch.empty(groups.shape[0], dtype=torch.bool, device=groups.device)
    for i in range(m):
        for j in range(i + 1, m):
            torch.ge(columns[i], columns[j], out=beats)
            ranks[j].add_(beats)
            beats.logical_not_()
            ranks[i].add_(beats)
    torch.lt(ranks.t(), n, out=out)


def _keep_2_of_4(groups: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`_pairwise_keep` for 2:4 with boolean logic: entry i is kept when it beats at least 2 of the other 3.

    ``bij = x_i >= x_j`` (i < j) says i beats j, its negation that j beats i; "at least two of three" is the majority
    ``(x & y) | (z & (x | y))``, which is self-dual, so entry 3 (that beats j only through ``~bj3``) is ``~maj(b03, b13, b23)``.
    """
    a, b, c, d = _magnitude(groups).unbind(1)
    b01, b02, b03, b12, b13, b23 = (torch.ge(x, y) for x, y in ((a, b), (a, c), (a, d), (b, c), (b, d), (c, d)))

    def at_least_two(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (x & y) | (z & (x | y))

    keep_2 = (b02 | b12).logical_not_() | (b23 & (b02 & b12).logical_not_())  # at least two of ~b02, ~b12, b23
    columns = [at_least_two(b01, b02, b03), at_least_two(~b01, b12, b13), keep_2, at_least_two(b03, b13, b23).logical_not_()]
    torch.stack(columns, dim=1, out=out)


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
