"""HardPruneCallback: cut to exact N:M, fine-tune with the masks fixed, route to a sparse backend, export."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks._common import OptimizerStepGate, check_export_dir_at_fit_start, log_now, refuse_sharded_strategy
from callbacks._export import LastValidation, export_model
from callbacks._precision import pending_grad_scale, refuse_fp16_weights
from callbacks._targeting import TargetingCallback
from callbacks.best_and_last_checkpoint import forget_best_checkpoints
from callbacks.nxm_sparsify import NxMSparsifyCallback
from callbacks.protocols import ScoredModule, hf_weight_keys
from nxm_lightning.sparsity.admm import check_layers_match
from nxm_lightning.sparsity.export_format import sparsity_manifest
from nxm_lightning.sparsity.nxm import first_violation
from nxm_lightning.sparsity.precision import compute_dtype
from nxm_lightning.sparsity.saliency import FisherEstimate, Saliency, check_saliency
from nxm_lightning.sparsity.sparse_linear import NxMLinear, check_backend_name, reroute_to_backend, route_to_backend
from nxm_lightning.sparsity.targets import Target, project_targets


class HardPruneCallback(TargetingCallback):
    r"""Prune the targets to exactly N:M (by magnitude or Fisher), keep the masks fixed for the rest of training, then serve.

    When to prune:
    - after ADMM (``after_admm``): when the ADMM phase of the trainer's :class:`NxMSparsifyCallback` ends, with its
      final masks, on its targets and patterns (the NxMTransformer pipeline). The sparsifier calls this callback's
      :meth:`on_admm_end` (:class:`~callbacks.protocols.ADMMEndListener`); which sparsifier: the one this callback
      was subscribed to (``sparsify.add_end_listener(prune)``, in Python), else the trainer's only one, else among
      several the one whose targets (pattern, include, exclude, ...) equal its own (a YAML list of callbacks);
    - otherwise at the start of epoch ``at_epoch`` or before optimizer step ``at_step``; with neither, at fit start
      (on a dense fine-tuned model, NVIDIA's ASP recipe).
    If fit ends before that point, the prune happens at fit end, so a finished fit always leaves an N:M model.

    After the prune, gradients of pruned weights are zeroed and the weights re-masked after every optimizer step
    (AdamW's moments and weight decay would move them otherwise). Checkpoints saved before the cut are dense, so the
    ModelCheckpoint "best" tracking restarts at the cut. At fit end the pruned Linear layers become
    :class:`~nxm_lightning.sparsity.sparse_linear.NxMLinear` with ``backend``, and ``export_dir`` (if set) receives a Hugging Face
    folder plus ``sparsity.json``; the same routing happens when a pruned checkpoint is validated, tested or predicted,
    and a model routed before is routed again there for the device it is on now (Lightning hands a GPU-fitted model
    back on the CPU, routed ``masked``; validated on a GPU it gets ``semi_structured`` where ``backend`` allows).

    Args:
        **targets: ``pattern`` (N:M, N kept of every M, NVIDIA's order; default ``"2:4"``), ``include``, ``exclude``,
            ``pattern_overrides``, ``strict``: the targets when no NxMSparsifyCallback is followed, as in
            :class:`~callbacks._targeting.TargetingCallback`.
        after_admm: ``None`` (default): follow the trainer's NxMSparsifyCallback when it has one and neither
            ``at_epoch`` nor ``at_step`` is set; ``True``: follow it, and refuse to train without one; ``False``:
            never follow one (prune at ``at_epoch`` / ``at_step`` / fit start even beside a sparsifier).
        at_epoch / at_step: prune at the start of this epoch / before this optimizer step (at most one).
        saliency: what the cut keeps in each group when this callback chooses the masks itself (not after ADMM, whose
            sparsifier chooses them with its own ``saliency``): ``"magnitude"`` (ASP's) or ``"fisher"``, the squared
            gradients summed over every optimizer step before the cut times W^2 (:mod:`nxm_lightning.sparsity.saliency`);
            ``fisher`` needs such steps: set ``at_step`` or ``at_epoch`` (>= 1).
        backend: ``auto``, ``masked``, ``packed`` or ``semi_structured`` (see :mod:`nxm_lightning.sparsity.sparse_linear`).
        backend_strict: an unavailable backend is an error instead of a warning and a fall back to ``masked``.
        export_dir: write the pruned model there at fit end (``save_pretrained`` + tokenizer + ``sparsity.json`` +
            a README.md model card): the module's Hugging Face model, at ``pl_module.model`` unless the module's
            ``hf_model_attribute`` names another submodule (:class:`~callbacks.protocols.HoldsPretrainedModel`).
            A new, empty, or previous export folder; any other existing folder is refused when fit starts, so that
            nothing of the user's is deleted.
        score_at_prune: log ``prune/score_before`` and ``prune/score_after`` (the module's ``evaluate_score`` on the
            validation data just before and just after the cut) when the module has that method
            (:class:`~callbacks.protocols.ScoredModule`).

    Example::

        # ASP baseline: magnitude 2:4 at fit start, then masked fine-tuning
        trainer = Trainer(callbacks=[HardPruneCallback(pattern="2:4", export_dir="exports/asp")])
        # the cut ranked by Fisher, estimated over the first 50 (dense) optimizer steps
        trainer = Trainer(callbacks=[HardPruneCallback(pattern="2:4", at_step=50, saliency="fisher")])
    """

    def __init__(
        self,
        *,
        after_admm: bool | None = None,
        at_epoch: int | None = None,
        at_step: int | None = None,
        saliency: Saliency = "magnitude",
        backend: str = "auto",
        backend_strict: bool = False,
        export_dir: str | None = None,
        score_at_prune: bool = True,
        **targets: Any,
    ) -> None:
        super().__init__(**targets)
        check_backend_name(backend)
        if at_epoch is not None and at_step is not None:
            raise ValueError(f"Set at most one of at_epoch ({at_epoch}) and at_step ({at_step}).")
        if (at_epoch is not None and at_epoch < 0) or (at_step is not None and at_step < 0):
            raise ValueError("at_epoch and at_step must be >= 0.")
        if after_admm and (at_epoch is not None or at_step is not None):
            raise ValueError(
                f"after_admm=True prunes when the ADMM phase ends; at_epoch={at_epoch} / at_step={at_step} name another "
                "point. Set one or the other."
            )
        check_saliency(saliency)
        if saliency == "fisher" and not (at_epoch or at_step):
            raise ValueError(
                "saliency='fisher' ranks by the squared gradients of the optimizer steps before the cut, and a cut at "
                f"fit start or after ADMM (at_epoch={at_epoch}, at_step={at_step}) has none of its own: set at_step "
                "(e.g. 50) or at_epoch >= 1. After ADMM, set saliency on the NxMSparsifyCallback instead."
            )
        self.after_admm = after_admm
        self.saliency = saliency
        self.at_epoch, self.at_step = at_epoch, at_step
        self.backend, self.backend_strict = backend, backend_strict
        self.export_dir = export_dir
        self.score_at_prune = score_at_prune
        self.targets: list[Target] = []
        self.masks: dict[str, torch.Tensor] = {}
        # The validation score just before and after the cut, for the export's model card.
        self.scores: dict[str, float] = {}
        self._validation = LastValidation()  # the last validation after the cut
        self.follow_admm = False
        self.fisher: FisherEstimate | None = None  # saliency="fisher": the sum of squared gradients, until the cut
        self._pending_state: dict[str, Any] | None = None
        self._step_gate = OptimizerStepGate()

    @property
    def pruned(self) -> bool:
        return bool(self.masks)

    # ---- setup ---------------------------------------------------------------------------------------------------

    def _sparsifier(self, trainer: pl.Trainer) -> NxMSparsifyCallback | None:
        """The NxMSparsifyCallback of ``trainer`` this callback follows, or None; the pairing rule, and the only place
        that looks for one (docs/ARCHITECTURE.md, "the cut"):

        1. the sparsifier this callback is subscribed to (``sparsify.add_end_listener(prune)``: the explicit link, made
           in Python, or by this method's caller at an earlier fit);
        2. otherwise, when ``after_admm`` allows (not False, and not None with ``at_epoch`` / ``at_step`` set), the
           trainer's only NxMSparsifyCallback, or among several the one whose targets equal this callback's: the
           implicit link, for LightningCLI, which builds each callback of a YAML list on its own.

        Each way that names no single sparsifier (two subscriptions, a subscription that ``after_admm`` /
        ``at_epoch`` / ``at_step`` contradicts, several sparsifiers and not exactly one match, none with
        ``after_admm=True``) is one ValueError at fit start.
        """
        found = [cb for cb in trainer.callbacks if isinstance(cb, NxMSparsifyCallback)]
        follows = not (self.after_admm is False or (self.after_admm is None and (self.at_epoch, self.at_step) != (None, None)))
        linked = [cb for cb in found if any(listener is self for listener in cb.end_listeners)]
        if len(linked) > 1 or (linked and not follows):
            raise ValueError(
                f"HardPruneCallback is subscribed (add_end_listener) to {len(linked)} NxMSparsifyCallback"
                + ("s" if len(linked) > 1 else "") + ", but it "
                + ("cuts once: subscribe it to one." if follows else
                   f"prunes at another point (after_admm={self.after_admm}, at_epoch={self.at_epoch}, "
                   f"at_step={self.at_step}): subscribe it to none, or set after_admm to true.")
            )  # fmt: skip
        if linked:
            return linked[0]
        if not follows:
            return None
        if len(found) > 1:
            found = [cb for cb in found if cb.spec == self.spec]
            if len(found) != 1:
                raise ValueError(
                    "HardPruneCallback: the trainer has several NxMSparsifyCallbacks and this HardPruneCallback's "
                    f"targets ({self.spec}) match {len(found)} of them. Give each HardPruneCallback the pattern, include, "
                    "exclude and pattern_overrides of the sparsifier it follows."
                )
        if not found and self.after_admm:
            raise ValueError(
                "HardPruneCallback(after_admm=True) follows an NxMSparsifyCallback, but the trainer has none. Add one, "
                "or set after_admm to null (prune at at_epoch / at_step / fit start)."
            )
        return found[0] if found else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_export_dir_at_fit_start(trainer, stage, self.export_dir)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_sharded_strategy(trainer, type(self).__name__)
        sparsify = self._sparsifier(trainer)
        self.follow_admm = sparsify is not None
        if sparsify is not None:
            self.targets = sparsify.targets
            sparsify.add_end_listener(self)
            rank_zero_info(f"HardPruneCallback: follows {sparsify.state_key} (the cut when its ADMM phase ends).")
        else:
            self.targets = self.spec.select(pl_module)
        refuse_fp16_weights(trainer, self.targets, type(self).__name__)
        if self.saliency == "fisher":
            self.fisher = FisherEstimate(self.targets)
        if self._pending_state is not None:
            self._load_state(self._pending_state)
            self._pending_state = None
        elif not self.follow_admm and self.at_epoch is None and self.at_step is None:
            self._prune(trainer, pl_module, "fit start")

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("masks"):
            check_layers_match(state["patterns"], state["shapes"], self.targets, what="hard-prune mask set")
            device = self.targets[0].module.weight.device
            self.masks = {name: mask.to(device) for name, mask in state["masks"].items()}
            self._apply_masks()
            self.fisher = None
        elif self.fisher is not None and state.get("fisher"):
            check_layers_match(state["patterns"], state["shapes"], self.targets, what="Fisher estimate")
            self.fisher.load_state_dict(state["fisher"])
        elif self.fisher is not None:
            rank_zero_warn(
                "HardPruneCallback(saliency='fisher'): the checkpoint holds no Fisher estimate (written with saliency "
                "'magnitude'?), so the cut ranks by the squared gradients of the steps from here on only."
            )

    # ---- pruning and masked fine-tuning --------------------------------------------------------------------------

    def _prune(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str, masks: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Cut the targets to N:M: with ``masks`` (ADMM's choice) if given, else by this callback's saliency."""
        if self.pruned:
            return
        ranked_by = "ADMM's masks" if masks is not None else "magnitude"
        if masks is None and self.fisher is not None:
            if self.fisher.steps:
                masks, ranked_by = self.fisher.masks(), f"Fisher over {self.fisher.steps} steps"
            else:
                rank_zero_warn(
                    f"HardPruneCallback(saliency='fisher'): no optimizer step before the cut at {when} to estimate the "
                    "Fisher from; the cut ranks by magnitude."
                )
        self.fisher = None
        scored = isinstance(pl_module, ScoredModule)
        loaders = _val_loaders(trainer) if self.score_at_prune and scored else None
        metrics: dict[str, float] = {}
        if loaders:
            metrics["prune/score_before"] = float(pl_module.evaluate_score(loaders))
        self.masks = project_targets(self.targets, masks)
        if loaders:
            metrics["prune/score_after"] = float(pl_module.evaluate_score(loaders))
            self.scores = {"before the cut": metrics["prune/score_before"], "after the cut": metrics["prune/score_after"]}
        metrics.update(self._sparsity_metrics())
        log_now(trainer, metrics)
        forget_best_checkpoints(trainer)  # they are dense: "best" must be chosen among the pruned ones only
        scores = ", ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in metrics.items() if "score" in k)
        rank_zero_info(
            f"HardPruneCallback: pruned {len(self.targets)} layers to N:M ({ranked_by}) at {when} "
            f"(step {trainer.global_step}); "
            f"density {metrics['sparsity/overall_density']:.4f}" + (f"; val score {scores}" if scores else "")
        )

    def on_admm_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, masks: dict[str, torch.Tensor]) -> None:
        """The followed sparsifier's ADMM phase has ended (:class:`~callbacks.protocols.ADMMEndListener`): cut with
        the masks it chose."""
        self._prune(trainer, pl_module, "the end of the ADMM phase", masks)

    def _sparsity_metrics(self) -> dict[str, float]:
        """Each target's sparsity and the overall density, as the export's manifest counts them."""
        weights = {t.name: t.module.weight.detach() for t in self.targets}
        patterns = {t.name: t.pattern for t in self.targets}
        manifest = sparsity_manifest(weights, patterns, {t.name for t in self.targets if t.transposed})
        metrics = {f"sparsity_layers/{name}": 1 - entry["density"] for name, entry in manifest["layers"].items()}
        density = manifest["overall_density"]
        return {**metrics, "sparsity/overall_density": density, "sparsity/overall_sparsity": 1 - density}

    @torch.no_grad()
    def _apply_masks(self) -> None:
        for t in self.targets:
            t.weight.mul_(self.masks[t.name])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step_gate.reset(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_epoch is not None and trainer.current_epoch >= self.at_epoch:
            self._prune(trainer, pl_module, f"the start of epoch {trainer.current_epoch}")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.at_step is not None and trainer.global_step >= self.at_step:
            self._prune(trainer, pl_module, "the planned step")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.pruned:
            if self.fisher is not None:  # gradients all-reduced across processes here: every rank cuts alike
                self.fisher.update(pending_grad_scale(trainer, optimizer))
            return
        for t in self.targets:
            grad = t.grad
            if grad is not None:
                grad.mul_(self.masks[t.name])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step_gate.stepped(trainer) and self.pruned:
            self._apply_masks()

    # ---- the end of fit: guaranteed prune, export, backend ---------------------------------------------------------

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.pruned:
            rank_zero_warn("HardPruneCallback: training ended before the planned prune point; pruning at fit end.")
            self._prune(trainer, pl_module, "fit end (training ended before the planned prune point)")
            for checkpoint in trainer.checkpoint_callbacks:
                if getattr(checkpoint, "last_model_path", ""):
                    trainer.save_checkpoint(checkpoint.last_model_path)
        if self.export_dir:
            self.export(pl_module, trainer)
        self.route(pl_module, compute_dtype(trainer.precision))

    def export(self, pl_module: pl.LightningModule, trainer: pl.Trainer | None = None) -> None:
        """Write the pruned model to ``export_dir`` (rank zero only): HF folder + tokenizer + sparsity.json + model card,
        by the export SavePretrainedCallback uses too (:func:`callbacks._export.export_model`)."""
        if not self.pruned:
            raise RuntimeError("Nothing to export: the model has not been pruned yet (HardPruneCallback prunes during fit).")
        keys = hf_weight_keys(pl_module, [t.name for t in self.targets])
        patterns = {keys[t.name]: t.pattern for t in self.targets}
        transposed = {keys[t.name] for t in self.targets if t.transposed}
        export_model(
            type(self).__name__, pl_module, trainer, self.export_dir, self.scores, self._validation, patterns, transposed
        )

    def route(self, pl_module: pl.LightningModule, dtype: torch.dtype | None = None) -> None:
        """Replace each pruned nn.Linear (or Conv1D) with an NxMLinear served by ``backend``.

        Args:
            pl_module: the module holding the pruned targets.
            dtype: the dtype the model computes in (``compute_dtype(trainer.precision)``: bf16 under ``bf16-mixed``),
                which ``semi_structured`` needs its weights in; None: the weights' own.
        """
        chosen = route_to_backend(pl_module, self.targets, self.backend, self.backend_strict, dtype)
        if chosen:
            rank_zero_info(f"HardPruneCallback: {len(self.targets)} layers served by backend {', '.join(sorted(chosen))}.")

    # ---- validate / test / predict from a pruned checkpoint -----------------------------------------------------

    def _route_if_pruned(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            return
        if any(isinstance(m, NxMLinear) for m in pl_module.modules()):
            # Routed before, maybe on another device (a GPU fit comes back on the CPU): decide again where it is now.
            chosen = reroute_to_backend(pl_module, self.backend, self.backend_strict, compute_dtype(trainer.precision))
            if chosen:
                rank_zero_info(f"HardPruneCallback: routed layers now served by backend {', '.join(sorted(chosen))}.")
            return
        sparsify = self._sparsifier(trainer)
        targets = (sparsify.spec if sparsify is not None else self.spec).select(pl_module)
        dense = [t.name for t in targets if first_violation(t.weight, t.pattern.n, t.pattern.m) is not None]
        if dense:
            rank_zero_warn(
                f"HardPruneCallback: {len(dense)} targeted layers (e.g. {dense[0]!r}) are not N:M in the loaded "
                "weights, so no sparse backend is applied. Load a checkpoint saved after the prune."
            )
            return
        self.targets = targets
        self.route(pl_module, compute_dtype(trainer.precision))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._route_if_pruned(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The score of the weights as they are now, for the model card: the export holds the final weights, so this is
        # its own score when no training step follows this validation.
        if self.pruned:
            self._validation.record(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._route_if_pruned(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._route_if_pruned(trainer, pl_module)

    # ---- checkpointing -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        layers = {"patterns": {t.name: str(t.pattern) for t in self.targets},
                  "shapes": {t.name: list(t.shape) for t in self.targets}}  # fmt: skip
        if not self.pruned:
            return {"fisher": self.fisher.state_dict(), **layers} if self.fisher is not None else {}
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}, **layers, "scores": dict(self.scores)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict or None
        # Checkpoints from before the model card have no scores.
        self.scores = dict((state_dict or {}).get("scores", {}))


def _val_loaders(trainer: pl.Trainer) -> Any:
    """The validation dataloaders, even before the fit loop has built them (prune at fit start)."""
    if trainer.val_dataloaders is not None:
        return trainer.val_dataloaders
    datamodule = trainer.datamodule
    return datamodule.val_dataloader() if datamodule is not None else None
