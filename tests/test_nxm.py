"""The N:M core: pattern parsing, exact masks against a brute-force reference, projection, compliance."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nxm_lightning.sparsity.nxm import NxMPattern, first_violation, is_nxm, nxm_mask, nxm_project

PATTERNS = [(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (5, 32)]


def brute_force_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per group: the n largest |w|, ties to the lower index, by plain Python sorting."""
    mask = torch.zeros_like(weight, dtype=torch.bool)
    for row, start in itertools.product(range(weight.shape[0]), range(0, weight.shape[1], m)):
        group = weight[row, start : start + m].abs().tolist()
        keep = sorted(range(m), key=lambda i: (-group[i], i))[:n]
        for i in keep:
            mask[row, start + i] = True
    return mask


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_mask_matches_brute_force_on_random_weights(n: int, m: int) -> None:
    weight = torch.randn(6, 4 * m, generator=torch.Generator().manual_seed(n * 100 + m))
    assert torch.equal(nxm_mask(weight, n, m), brute_force_mask(weight, n, m))


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_mask_matches_brute_force_under_ties(n: int, m: int) -> None:
    # few distinct magnitudes (and signs): most groups have ties; all-zero groups still keep exactly n
    generator = torch.Generator().manual_seed(m)
    weight = torch.randint(-2, 3, (8, 4 * m), generator=generator).float()
    weight[0] = 0.0
    mask = nxm_mask(weight, n, m)
    assert torch.equal(mask, brute_force_mask(weight, n, m))
    assert torch.equal(mask.reshape(-1, m).sum(1), torch.full((8 * 4,), n))


def test_mask_example_and_projection() -> None:
    weight = torch.tensor([[0.1, -3.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    assert nxm_mask(weight, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]
    assert nxm_project(weight, 2, 4).tolist() == [[0.0, -3.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0]]


def test_nan_counts_as_largest() -> None:
    weight = torch.tensor([[float("nan"), 1.0, 2.0, 3.0]])
    assert nxm_mask(weight, 2, 4).tolist() == [[True, False, False, True]]


def test_is_nxm_and_first_violation() -> None:
    weight = nxm_project(torch.randn(4, 16), 2, 4)
    assert is_nxm(weight, 2, 4)
    weight[2, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    assert not is_nxm(weight, 2, 4)
    assert first_violation(weight, 2, 4) == (2, 8, 3)


@pytest.mark.parametrize("bad", ["4:2", "0:4", "2-4", "a:b", "2:2", "", "2:4:8"])
def test_bad_pattern_strings_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="N:M pattern"):
        NxMPattern.parse(bad)


def test_reversed_pattern_hint() -> None:
    with pytest.raises(ValueError, match="did you mean '2:4'"):
        NxMPattern.parse("4:2")


def test_non_2d_weight_and_bad_width_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D weights"):
        nxm_mask(torch.randn(2, 3, 4), 2, 4)
    with pytest.raises(ValueError, match="not a multiple of M=4"):
        nxm_mask(torch.randn(2, 6), 2, 4)


@settings(max_examples=60, deadline=None)
@given(
    n_m=st.sampled_from(PATTERNS),
    rows=st.integers(1, 4),
    groups=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    levels=st.integers(1, 5),
)
def test_mask_invariants(n_m: tuple[int, int], rows: int, groups: int, seed: int, levels: int) -> None:
    n, m = n_m
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randint(-levels, levels + 1, (rows, groups * m), generator=generator).float()
    mask = nxm_mask(weight, n, m)
    # exactly n kept per group, the projection is N:M, idempotent, and keeps the most magnitude possible
    assert torch.equal(mask.reshape(-1, m).sum(1), torch.full((rows * groups,), n))
    projected = nxm_project(weight, n, m)
    assert is_nxm(projected, n, m)
    assert torch.equal(nxm_project(projected, n, m), projected)
    best = weight.abs().reshape(-1, m).topk(n, dim=1).values.sum()
    assert torch.isclose(projected.abs().sum(), best)


@given(st.integers(1, 64), st.integers(1, 64))
def test_pattern_parse_roundtrip(n: int, m: int) -> None:
    if 0 < n < m:
        assert NxMPattern.parse(f"{n}:{m}") == NxMPattern(n, m)
        assert str(NxMPattern(n, m)) == f"{n}:{m}"
    else:
        with pytest.raises(ValueError):
            NxMPattern.parse(f"{n}:{m}")
