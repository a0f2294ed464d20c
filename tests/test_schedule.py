"""The ADMM phase's start/end points and rho schedule (pure Python), against hand-computed values."""

from __future__ import annotations

import pytest

from nxm_lightning.sparsity.schedule import (
    PhasePlan,
    check_phase_points,
    check_rho_schedule,
    geometric_rho_factor,
    plan_phase,
    point_to_step,
    rho_sequence,
    single_point,
    zsteps_in_phase,
)


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


# ---- the phase plan: pure, so every refusal is checked here without a trainer -----------------------------------------


def test_plan_phase_resolves_points_zsteps_and_the_auto_factor() -> None:
    # 6 epochs of 180 steps; ADMM from epoch 2 to 60% of training, a Z-step every 20 steps: 380, ..., 640 (14 Z-steps)
    plan = plan_phase(("epoch", 2), ("fraction", 0.6), 1080, 180, 20, rho=0.01, rho_factor="auto", rho_max=0.5)
    assert plan == PhasePlan(start_step=360, end_step=648, zsteps=14, rho_factor=pytest.approx(50 ** (1 / 13)))
    # No points: the whole fit, the end left open (None), a constant rho kept as given.
    assert plan_phase(None, None, 1080, 180, None, rho=1e-3, rho_factor=1.0, rho_max=None) == PhasePlan(0, None, 6, 1.0)


@pytest.mark.parametrize(
    ("start", "end", "update_every", "rho_factor", "message"),
    [
        (("step", 1080), None, 20, "auto", r"start at step 1080, but training has 1080 optimizer steps \(180 per epoch\)"),
        (("fraction", 0.5), ("epoch", 3), 20, "auto", "would start at step 540 and end at step 540"),
        (None, ("step", 30), 20, "auto", r"over the phase's Z-steps, but the phase \(steps 0 to 30\) has 1"),
        (None, ("step", 100), 20, 1.5, r"only 5 Z-steps, so rho reaches 0.0506, not rho_max=0.5. Use rho_factor >= 2.659"),
    ],
)
def test_plan_phase_refuses_a_phase_that_cannot_run(
    start: tuple | None, end: tuple | None, update_every: int, rho_factor: float | str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_phase(start, end, 1080, 180, update_every, rho=0.01, rho_factor=rho_factor, rho_max=0.5)  # type: ignore[arg-type]


def test_phase_points_and_rho_schedule_checked_before_training_length_is_known() -> None:
    with pytest.raises(ValueError, match=r"start \(start_epoch=3\) at or after its end \(end_epoch=3\)"):
        check_phase_points(("epoch", 3), ("epoch", 3))
    check_phase_points(("epoch", 3), ("step", 10))  # of different kinds: only the plan can compare them
    with pytest.raises(ValueError, match="set rho_max above rho"):
        check_rho_schedule(0.5, "auto", 0.5)
    with pytest.raises(ValueError, match="must be a number >= 1 or 'auto'"):
        check_rho_schedule(0.01, "fast", 0.5)  # type: ignore[arg-type]
