"""The Lightning side of mixed precision for the callbacks: where the gradient scaler leaves the gradients, and the
refusal of fp16 weights."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from nxm_lightning.sparsity.targets import Target


def pending_grad_scale(trainer: pl.Trainer, optimizer: Any) -> float:
    """The factor the gradients still carry in ``on_before_optimizer_step``.

    Under ``16-mixed``, Lightning's ``MixedPrecision.optimizer_step`` calls ``scaler.unscale_(optimizer)`` after the
    backward and *before* the ``on_before_optimizer_step`` hooks, so the gradients there are true gradients (1.0),
    except for optimizers that unscale inside their own ``step`` (``fused=True`` Adam/AdamW/SGD: torch marks them
    ``_step_supports_amp_scaling``, and Lightning then leaves the unscaling to ``GradScaler.step``): their gradients
    still carry the scaler's current scale. bf16 and fp32 have no scaler: 1.0.

    Args:
        trainer: the running trainer (its precision plugin holds the scaler, if any).
        optimizer: the optimizer about to step (the hook's argument).
    """
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled() or not getattr(optimizer, "_step_supports_amp_scaling", False):
        return 1.0
    return float(scaler.get_scale())


def refuse_fp16_weights(trainer: pl.Trainer, targets: list[Target], who: str) -> None:
    """Refuse to fit fp16 weights (``16-true``, or a model made ``.half()`` by hand), saying what to use instead.

    Why: Adam's ``eps`` (1e-8) is 0 in fp16, so a weight whose gradient is zero becomes NaN (0/0) at its first
    optimizer step, and after the cut every pruned weight has a zero gradient. bf16 keeps fp32's exponent range, so
    ``bf16-true`` trains (the ADMM state stays fp32).

    Args:
        trainer: the trainer (``16-true`` converts the weights only when fit starts, after this check).
        targets: the targeted layers, whose current dtype is checked too.
        who: the refusing callback's name, for the message.
    """
    dtypes = sorted({str(t.weight.dtype) for t in targets})
    if trainer.precision == "16-true" or "torch.float16" in dtypes:
        raise ValueError(
            f"{who} cannot fit fp16 weights (precision {trainer.precision!r}, target weights {', '.join(dtypes)}): "
            "Adam's eps (1e-8) is 0 in fp16, so every weight with a zero gradient (each pruned weight once the mask "
            "is fixed) turns NaN at its first optimizer step. Use precision '16-mixed' (fp32 weights, fp16 matmuls, "
            "gradient scaling) or 'bf16-mixed' where bf16 is supported. Validating, testing or predicting in "
            "'16-true' is fine."
        )
