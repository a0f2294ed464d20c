"""The ADMM phase's start/end points and rho schedule (pure Python), against hand-computed values."""

from __future__ import annotations

import pytest

from nxm_lightning.sparsity.schedule import geometric_rho_factor, point_to_step, rho_sequence, single_point, zsteps_in_phase


def test_points_become_optimizer_steps() -> None:
    # 6 epochs of 180 steps = 1080 steps
    assert point_to_step(("epoch", 2), 1080, 180) == 360
    assert point_to_step(("step", 77), 1080, 180) == 77
    assert point_to_step(("fraction", 1 / 3), 1080, 180) == 360
    assert point_to_step(("fraction", 0.501), 1080, 180) == 542  # ceil(541.08)


def test_zsteps_in_phase_counts_updates_in_the_half_open_phase() -> None:
    assert zsteps_in_phase(360, 720, 20, 180) == 18  # steps 380, 400, ..., 720
    assert zsteps_in_phase(350, 725, 20, 180) == 19  # 360, ..., 720
    assert zsteps_in_phase(0, 540, None, 180) == 3  # one per epoch end: 180, 360, 540


def test_geometric_factor_reaches_rho_max_at_the_last_zstep() -> None:
    factor = geometric_rho_factor(0.01, 0.5, 18)
    assert factor == pytest.approx(50 ** (1 / 17))
    sequence = rho_sequence(0.01, factor, 0.5, 18)
    assert sequence[0] == 0.01 and sequence[-1] == pytest.approx(0.5) and len(sequence) == 18
    assert sequence[1] == pytest.approx(0.01 * 50 ** (1 / 17))
    assert geometric_rho_factor(0.01, 0.5, 1) == 1.0


def test_rho_sequence_caps() -> None:
    assert rho_sequence(0.01, 2.0, 0.05, 5) == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    assert rho_sequence(0.01, 1.0, None, 3) == [0.01, 0.01, 0.01]


@pytest.mark.parametrize(
    ("what", "args", "message"),
    [
        ("start", (1, 5, None), "at most one of start_epoch, start_step, start_fraction"),
        ("start", (None, None, 1.0), r"start_fraction=1.0 must be in \[0, 1\)"),
        ("end", (None, None, 0.0), r"end_fraction=0.0 must be in \(0, 1\]"),
        ("end", (0, None, None), "end_epoch=0 must be a whole number >= 1"),
        ("start", (None, -3, None), "start_step=-3 must be a whole number >= 0"),
    ],
)
def test_bad_points(what: str, args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        single_point(what, *args)


def test_good_points() -> None:
    assert single_point("start", None, None, None) is None
    assert single_point("start", 0, None, None) == ("epoch", 0)
    assert single_point("end", None, None, 0.5) == ("fraction", 0.5)
