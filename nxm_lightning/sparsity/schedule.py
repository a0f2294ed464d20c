"""When the ADMM phase starts and ends, and how rho grows inside it. Plain Python: no torch, no Lightning.

A phase point is given as an epoch, an optimizer step or a fraction of training; :func:`point_to_step` turns each into
the optimizer step at which it falls, so that start and end can be checked against each other and against the length
of training before the first step is taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

POINT_KINDS = ("epoch", "step", "fraction")


def single_point(what: str, epoch: int | None, step: int | None, fraction: float | None) -> tuple[str, float] | None:
    """The one point set among ``{what}_epoch``, ``{what}_step``, ``{what}_fraction`` as ``(kind, value)``, or None.

    Raises ``ValueError`` when more than one is set, or a value is out of range (epochs and steps >= 0 for a start,
    >= 1 for an end; fractions in [0, 1) for a start, (0, 1] for an end).
    """
    given = {kind: value for kind, value in zip(POINT_KINDS, (epoch, step, fraction)) if value is not None}
    if len(given) > 1:
        names = {f"{what}_{kind}": value for kind, value in given.items()}
        raise ValueError(f"Set at most one of {what}_epoch, {what}_step, {what}_fraction; got {names}.")
    if not given:
        return None
    kind, value = next(iter(given.items()))
    if kind == "fraction":
        valid = 0 <= value < 1 if what == "start" else 0 < value <= 1
        if not valid:
            interval = "[0, 1)" if what == "start" else "(0, 1]"
            raise ValueError(f"{what}_fraction={value} must be in {interval} (a share of the training steps).")
    else:
        lowest = 0 if what == "start" else 1
        if int(value) != value or value < lowest:
            raise ValueError(f"{what}_{kind}={value} must be a whole number >= {lowest}.")
    return kind, value


def check_phase_points(start: tuple[str, float] | None, end: tuple[str, float] | None) -> None:
    """Refuse a start point at or after an end point of the same kind (the others are checked by :func:`plan_phase`,
    once the length of training is known)."""
    if start and end and start[0] == end[0] and start[1] >= end[1]:
        raise ValueError(
            f"The ADMM phase would start (start_{start[0]}={start[1]}) at or after its end (end_{end[0]}={end[1]}): "
            "set the start point before the end point."
        )


def check_rho_schedule(rho: float, rho_factor: float | Literal["auto"], rho_max: float | None) -> None:
    """Refuse a rho schedule that cannot work whatever the phase's length: ``auto`` without a ``rho_max`` above
    ``rho``, or a factor that is not a number."""
    if rho_factor == "auto":
        if rho_max is None or rho_max <= rho:
            raise ValueError(f"rho_factor: auto grows rho from rho={rho} to rho_max: set rho_max above rho (got {rho_max}).")
    elif not isinstance(rho_factor, (int, float)):
        raise ValueError(f"rho_factor={rho_factor!r} must be a number >= 1 or 'auto'.")


@dataclass(frozen=True)
class PhasePlan:
    """Where the ADMM phase falls in training and how rho grows in it, in optimizer steps."""

    start_step: int  # the phase starts once this many optimizer steps are done
    end_step: int | None  # it ends at this step (None: at the end of fit)
    zsteps: int  # the Z/U updates that fall inside it
    rho_factor: float  # rho's factor per Z-step ("auto" resolved)


def plan_phase(
    start: tuple[str, float] | None,
    end: tuple[str, float] | None,
    total_steps: int,
    steps_per_epoch: int,
    update_every: int | None,
    rho: float,
    rho_factor: float | Literal["auto"],
    rho_max: float | None,
) -> PhasePlan:
    """Turn the phase's start and end points (from :func:`single_point`) into optimizer steps, count its Z-steps and
    resolve ``rho_factor: auto``; raise ``ValueError`` saying what to change when the phase cannot run as configured.

    Args:
        start / end: the points, or None (start: the first step; end: the end of fit).
        total_steps / steps_per_epoch: the length of training in optimizer steps.
        update_every: Z-step every this many optimizer steps, or None for once per epoch.
        rho / rho_factor / rho_max: the schedule (``"auto"``: the factor that reaches ``rho_max`` at the last Z-step).
    """
    start_step = point_to_step(start, total_steps, steps_per_epoch) if start else 0
    # No end point: the phase lasts to the end of fit (planned as ending at the last step).
    end_step = point_to_step(end, total_steps, steps_per_epoch) if end else None
    last_step = end_step if end_step is not None else total_steps
    where = f"training has {total_steps} optimizer steps ({steps_per_epoch} per epoch)"
    if start_step >= total_steps:
        raise ValueError(f"The ADMM phase would start at step {start_step}, but {where}: lower the start point or train longer.")
    if start_step >= last_step:
        raise ValueError(
            f"The ADMM phase would start at step {start_step} and end at step {last_step} ({where}): set the start "
            "point before the end point."
        )
    zsteps = zsteps_in_phase(start_step, min(last_step, total_steps), update_every, steps_per_epoch)
    phase = f"the phase (steps {start_step} to {last_step})"
    if rho_factor == "auto":
        assert rho_max is not None  # check_rho_schedule
        if zsteps < 2:
            raise ValueError(
                f"rho_factor: auto grows rho from {rho} to rho_max={rho_max} over the phase's Z-steps, but {phase} has "
                f"{zsteps}: Z-step more often (update_every) or lengthen it."
            )
        return PhasePlan(start_step, end_step, zsteps, geometric_rho_factor(rho, rho_max, zsteps))
    if rho_max is not None and rho_factor > 1:
        reached = rho_sequence(rho, rho_factor, rho_max, zsteps)[-1] if zsteps else rho
        if reached < rho_max * (1 - 1e-6):
            needed = geometric_rho_factor(rho, rho_max, zsteps)
            raise ValueError(
                f"rho grows from {rho} by x{rho_factor} per Z-step, but {phase} has only {zsteps} Z-steps, so rho "
                f"reaches {reached:.3g}, not rho_max={rho_max}. Use rho_factor >= {needed:.3f} (or rho_factor: auto), "
                "Z-step more often (update_every), or lengthen the phase."
            )
    return PhasePlan(start_step, end_step, zsteps, float(rho_factor))


def point_to_step(point: tuple[str, float], total_steps: int, steps_per_epoch: int) -> int:
    """The optimizer step at which ``point`` falls: epoch e ends at step e * steps_per_epoch, fraction f at
    ceil(f * total_steps)."""
    kind, value = point
    if kind == "epoch":
        return int(value) * steps_per_epoch
    if kind == "step":
        return int(value)
    return math.ceil(value * total_steps)


def zsteps_in_phase(start_step: int, end_step: int, update_every: int | None, steps_per_epoch: int) -> int:
    """How many Z/U updates fall in the phase (start_step, end_step]: one every ``update_every`` optimizer steps
    (at steps divisible by it), or one per epoch end when ``update_every`` is None."""
    every = update_every if update_every is not None else steps_per_epoch
    return end_step // every - start_step // every


def geometric_rho_factor(rho: float, rho_final: float, zsteps: int) -> float:
    """The factor that takes ``rho`` to ``rho_final`` in ``zsteps - 1`` updates, so that the W-step before the
    phase's last Z-step runs at ``rho_final``; 1.0 with fewer than 2 Z-steps."""
    if zsteps < 2 or rho_final <= rho:
        return 1.0
    return (rho_final / rho) ** (1 / (zsteps - 1))


def rho_sequence(rho: float, factor: float, rho_max: float | None, zsteps: int) -> list[float]:
    """The rho of each W-step before Z-steps 1..zsteps: rho, rho * factor, ... capped at ``rho_max``."""
    values = []
    for _ in range(zsteps):
        values.append(rho)
        rho = min(rho * factor, rho_max) if rho_max is not None else rho * factor
    return values
