"""When the ADMM phase starts and ends, and how rho grows inside it. Plain Python: no torch, no Lightning.

A phase point is given as an epoch, an optimizer step or a fraction of training; :func:`point_to_step` turns each into
the optimizer step at which it falls, so that start and end can be checked against each other and against the length
of training before the first step is taken.
"""

from __future__ import annotations

import math

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
