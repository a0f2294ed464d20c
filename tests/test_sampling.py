"""ShuffledLengthBuckets: length-homogeneous batches in random order."""

from __future__ import annotations

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from nxm_lightning.tasks.sampling import ShuffledLengthBuckets


def batches_of(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def descents(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of consecutive full batches whose longest member is shorter than the previous batch's."""
    longest = [max(lengths[i] for i in batch) for batch in batches]
    pairs = list(zip(longest, longest[1:]))
    return sum(b < a for a, b in pairs) / len(pairs)


def test_every_index_once_in_homogeneous_batches_in_random_order() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(5, 120, (1000,), generator=generator).tolist()
    order = list(ShuffledLengthBuckets(lengths, batch_size=8, mega_batches=10))
    assert sorted(order) == list(range(1000))
    batches = batches_of(order, 8)
    assert all(len(batch) == 8 for batch in batches)  # 1000 = 125 x 8: no partial batch in the middle
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15  # sorted within mega-batches of 80: a random batch of 8 would span about 90
    assert 0.35 < descents(lengths, batches) < 0.65  # no drift: about as many rises as falls
    # transformers' LengthGroupedSampler, for contrast, drifts from long to short inside each mega-batch
    grouped = batches_of(list(LengthGroupedSampler(8, lengths=lengths)), 8)
    assert descents(lengths, grouped) > 0.8


def test_partial_batch_goes_last_and_seed_repeats_the_order() -> None:
    lengths = list(range(50))
    torch.manual_seed(3)
    first = list(ShuffledLengthBuckets(lengths, batch_size=8, mega_batches=2))
    torch.manual_seed(3)
    assert list(ShuffledLengthBuckets(lengths, batch_size=8, mega_batches=2)) == first
    batches = batches_of(first, 8)
    assert [len(batch) for batch in batches] == [8] * 6 + [2]
    assert sorted(first) == lengths
    with pytest.raises(ValueError, match="batch_size=0"):
        ShuffledLengthBuckets(lengths, batch_size=0)
