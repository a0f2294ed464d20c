"""DistillationModule: a frozen dense teacher guides the student that the callbacks make N:M sparse.

The teacher is a submodule named ``teacher``: the target selection never sparsifies it and ``configure_optimizers``
never optimizes it. It is either loaded from a path (checkpoints then store only a reference to it: its path and a
fingerprint of its weights), or a snapshot of the student taken during fit (``teacher_snapshot_epoch``: one command
trains dense, then distills from that dense model while sparsifying; checkpoints then hold the snapshot's weights).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification

from nxm_lightning.tasks.hub import DEFAULT_MODEL, load_pretrained
from nxm_lightning.tasks.module import SequenceClassificationModule

StudentInit = Literal["teacher", "pretrained"]
STUDENT_INITS = ("teacher", "pretrained")
HiddenLoss = Literal["mse", "normalized"]
HIDDEN_LOSSES = ("mse", "normalized")
HiddenLayers = Literal["all", "last"]
HIDDEN_LAYERS = ("all", "last")
# The checkpoint entry holding the cached teacher logits (cache_teacher_logits), so that a resumed fit uses the same ones.
LOGIT_CACHE_KEY = "teacher_logit_cache"


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, regression: bool) -> torch.Tensor:
    """The distillation term: T^2 KL(softmax(teacher / T) || softmax(student / T)), or the MSE of the scores.

    Args:
        student_logits / teacher_logits: ``(batch, num_labels)``.
        temperature: T > 0; the T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
        regression: compare the scores with MSE instead (STS-B: one output, no distribution to match).
    """
    if regression:
        return F.mse_loss(student_logits.squeeze(-1).float(), teacher_logits.squeeze(-1).float())
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # batchmean: the KL divergence per example, as in its definition (reduction="mean" would also divide by num_labels).
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return temperature**2 * kl


def hidden_state_loss(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    layer_map: dict[int, int],
    attention_mask: torch.Tensor,
    normalized: bool = False,
) -> torch.Tensor:
    """Mean over the mapped layers of the MSE between hidden states, over real (non-padding) tokens only.

    Args:
        student_hidden / teacher_hidden: ``output_hidden_states`` of each model (index 0: the embeddings).
        layer_map: ``{student index: teacher index}`` into those tuples.
        attention_mask: ``(batch, seq)``, 1 for real tokens.
        normalized: divide each layer's MSE by the teacher's mean squared feature of that layer (SquareHead, Kurtic
            et al. 2023), so that every layer weighs alike whatever its scale (a BERT's deep layers have features
            several times larger than its embeddings') and the loss reads as a relative error: 0.1 = 10% of the
            teacher's energy.
    """
    mask = attention_mask.unsqueeze(-1).float()
    count = mask.sum() * student_hidden[0].shape[-1]
    losses = []
    for s, t in layer_map.items():
        teacher = teacher_hidden[t].float()
        error = ((student_hidden[s].float() - teacher) ** 2 * mask).sum()
        # The count cancels in the normalized ratio; the clamp only guards an all-zero feature (never a real layer).
        losses.append(error / (teacher**2 * mask).sum().clamp_min(1e-12) if normalized else error / count)
    return torch.stack(losses).mean()


def example_keys(inputs: dict[str, torch.Tensor]) -> list[bytes]:
    """One key per example: a hash of its token ids (and token types) without padding.

    The same example gets the same key whatever its batch, position or padded length (shuffling, length grouping);
    another text, tokenizer or max_seq_length gives other ids and so another key.

    Args:
        inputs: a batch with ``input_ids`` and optionally ``attention_mask`` and ``token_type_ids``, ``(batch, seq)``.
    """
    ids = inputs["input_ids"].cpu()
    mask = inputs["attention_mask"].cpu().bool() if "attention_mask" in inputs else torch.ones_like(ids, dtype=torch.bool)
    types = inputs["token_type_ids"].cpu() if "token_type_ids" in inputs else None
    keys = []
    for row in range(ids.shape[0]):
        digest = hashlib.blake2b(ids[row][mask[row]].numpy().tobytes(), digest_size=16)
        if types is not None:
            digest.update(types[row][mask[row]].numpy().tobytes())
        keys.append(digest.digest())
    return keys


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of every tensor (name, dtype, shape, bytes) of a state dict: equal only for identical weights.

    Args:
        module: the model to fingerprint (about 0.1 s for MiniLM-L6 on a CPU).
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_teacher_path(path: str) -> Path:
    """``path`` as a Path, checked to exist.

    Args:
        path: the ``teacher`` argument of :class:`DistillationModule`.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says what a teacher can be).
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(
            f"Teacher {path!r} not found. Pass a Hugging Face folder (e.g. exports/glue_dense, written by "
            "`python cli.py fit --config configs/glue_dense.yaml`) or a Lightning .ckpt of SequenceClassificationModule."
        )
    return source


def load_teacher(path: str, trust_remote_code: bool = False) -> nn.Module:
    """The teacher's Hugging Face model, in eval mode with gradients off.

    Args:
        path: a folder written by ``save_pretrained`` (e.g. ``SavePretrainedCallback``'s export), or a Lightning
            ``.ckpt`` of a ``SequenceClassificationModule`` (its ``model``; rebuilt from the ``model_name_or_path``
            recorded in the checkpoint, which must be loadable here).
        trust_remote_code: passed to transformers for a folder.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    source = check_teacher_path(path)
    if source.is_dir():
        model = load_pretrained(AutoModelForSequenceClassification, str(source), trust_remote_code=trust_remote_code)
    else:
        model = SequenceClassificationModule.load_from_checkpoint(source, map_location="cpu").model
    model.eval()
    model.requires_grad_(False)
    return model


class DistillationModule(SequenceClassificationModule):
    r"""Fine-tune a student while a frozen teacher guides it (knowledge distillation), scored with GLUE metrics.

    Training loss: ``alpha * task loss + logit_weight * kd + hidden_weight * hidden``, where kd = T^2
    KL(softmax(teacher / T) || softmax(student / T)) for classification and the MSE between the two scores for
    regression (STS-B), ``logit_weight`` is ``1 - alpha`` unless set, and hidden is the MSE between mapped hidden
    states (feature distillation; ``hidden_loss: normalized`` divides each layer's by the teacher's feature energy).
    Two recipes of the literature in YAML (``alpha: 0`` and ``logit_weight: 0`` leave only the feature term):

    - SquareHead (Kurtic et al. 2023): ``hidden_weight: 1``, ``hidden_loss: normalized``, ``hidden_layers: all``
      beside the task loss (``alpha: 1``) and optionally the logit term;
    - Intel Neural Compressor's 2:4 recipe for small BERTs: ``alpha: 0``, ``logit_weight: 0``, ``hidden_weight: 2``,
      ``hidden_layers: last``: the last hidden state alone, so the classifier (the teacher's, with
      ``student_init: teacher``) gets zero gradients and stays the teacher's (but for weight decay). Terms of weight
      0 stay in the graph, so that every parameter takes part in the backward pass (DDP needs that).

    Validation, test, predict and export use the student (``self.model``) only; the teacher (``self.teacher``) stays
    in eval mode, gets no gradients, is never in the optimizer nor a sparsification target, and is not stored in
    checkpoints: loading one reloads it from ``teacher`` (a warning says when its weights differ from those the
    checkpoint was trained with).

    Args:
        model_name_or_path: the student's pretrained weights with ``student_init="pretrained"``; always the model
            whose tokenizer prepares the data (``cli.py`` links it), so the teacher must share its vocabulary.
        **kwargs: the other arguments of :class:`SequenceClassificationModule` (``task_name``, ``learning_rate``,
            ...), by keyword; the CLI and ``--help`` list them from there.
        teacher: the fine-tuned dense teacher: a Hugging Face folder or a ``.ckpt`` of SequenceClassificationModule.
        teacher_snapshot_epoch: instead of ``teacher``: at the start of this epoch the teacher becomes a frozen copy
            of the student as it is then (e.g. the end of a dense phase: NxMSparsifyCallback's ``start_epoch``);
            before it the loss is the task loss alone. Needs ``student_init="pretrained"``.
        alpha: weight of the task loss, in [0, 1]; the logit term gets ``1 - alpha`` unless ``logit_weight`` is set.
        logit_weight: weight of the logit term (>= 0); None: ``1 - alpha``.
        temperature: T > 0, softens both distributions (classification only).
        hidden_weight: weight of the hidden-state term; 0 turns it off (and skips computing hidden states). The
            teacher's hidden states come from the forward pass that gives its logits (under ``no_grad``), so the
            term costs no teacher work beyond that pass, but rules out ``cache_teacher_logits`` (docs/BENCHMARKS.md).
        hidden_loss: ``"mse"``: the plain MSE of each mapped layer; ``"normalized"``: each layer's MSE divided by the
            teacher's mean squared feature there (SquareHead). Either is averaged over the mapped layers.
        hidden_layers: the default ``layer_map`` when the depths are equal: ``"all"`` maps every layer (embeddings
            included) to itself, ``"last"`` the last hidden state only.
        layer_map: ``{student layer: teacher layer}`` for that term (0 = embeddings, i = output of block i), for
            students and teachers of other depths; given, it replaces ``hidden_layers``. Hidden sizes must match.
        student_init: ``"teacher"``: the student starts as a copy of the teacher (the paper's pipeline);
            ``"pretrained"``: from ``model_name_or_path``.
        cache_teacher_logits: compute the teacher's logits once per training example and reuse them every epoch
            (keyed by a hash of the example's token ids; cleared when the teacher's weights change). Not with
            ``hidden_weight > 0``, which needs the teacher's hidden states at every step.

    Example::

        module = DistillationModule(task_name="stsb", teacher="exports/glue_dense", alpha=0.5, temperature=2.0)
        trainer = Trainer(callbacks=[NxMSparsifyCallback(pattern="2:4"), HardPruneCallback(export_dir="exports/glue_kd")])
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        *,
        teacher: str | None = None,
        teacher_snapshot_epoch: int | None = None,
        alpha: float = 0.5,
        logit_weight: float | None = None,
        temperature: float = 2.0,
        hidden_weight: float = 0.0,
        hidden_loss: HiddenLoss = "mse",
        hidden_layers: HiddenLayers = "all",
        layer_map: dict[int, int] | None = None,
        student_init: StudentInit = "teacher",
        cache_teacher_logits: bool = False,
        **kwargs: Any,
    ) -> None:
        # Checked before any model is loaded, so that a bad config fails in seconds.
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha={alpha} must be in [0, 1] (the weight of the task loss; 1 - alpha goes to distillation).")
        if logit_weight is not None and not logit_weight >= 0:
            raise ValueError(f"logit_weight={logit_weight} must be >= 0 (0 turns the logit term off; unset: 1 - alpha).")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 (1 = the plain softmax; 2..4 are usual).")
        if hidden_weight < 0:
            raise ValueError(f"hidden_weight={hidden_weight} must be >= 0 (0 turns hidden-state distillation off).")
        if hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"hidden_loss={hidden_loss!r} is not valid; choose one of {list(HIDDEN_LOSSES)}.")
        if hidden_layers not in HIDDEN_LAYERS:
            raise ValueError(f"hidden_layers={hidden_layers!r} is not valid; choose one of {list(HIDDEN_LAYERS)}.")
        if layer_map and hidden_weight == 0:
            raise ValueError("layer_map is set but hidden_weight is 0, so it would be ignored: set hidden_weight > 0.")
        if layer_map and hidden_layers != "all":
            raise ValueError(
                f"Both layer_map and hidden_layers={hidden_layers!r} choose the layers: keep one (layer_map for models "
                "of other depths)."
            )
        if alpha == 0 and logit_weight == 0 and hidden_weight == 0:
            raise ValueError("alpha, logit_weight and hidden_weight are all 0: nothing would be trained; set one > 0.")
        if student_init not in STUDENT_INITS:
            raise ValueError(f"student_init={student_init!r} is not valid; choose one of {list(STUDENT_INITS)}.")
        if cache_teacher_logits and hidden_weight > 0:
            raise ValueError(
                "cache_teacher_logits caches logits only, but hidden_weight > 0 needs the teacher's hidden states at "
                "every step: turn one of them off."
            )
        if (teacher is None) == (teacher_snapshot_epoch is None):
            raise ValueError(
                "Give exactly one teacher: `teacher` (a fine-tuned model's folder or .ckpt) or `teacher_snapshot_epoch` "
                f"(a frozen copy of the student taken at the start of that epoch); got teacher={teacher!r}, "
                f"teacher_snapshot_epoch={teacher_snapshot_epoch!r}."
            )
        if teacher_snapshot_epoch is not None:
            if teacher_snapshot_epoch < 1:
                raise ValueError(f"teacher_snapshot_epoch={teacher_snapshot_epoch} must be >= 1 (epoch 0 has no training yet).")
            if student_init == "teacher":
                raise ValueError(
                    "student_init: teacher copies the teacher into the student at the start, but with "
                    "teacher_snapshot_epoch the teacher is taken from the student later: set student_init: pretrained."
                )
        else:
            check_teacher_path(teacher)  # type: ignore[arg-type]
        super().__init__(model_name_or_path, **kwargs)  # the fine-tuning arguments (LightningCLI reads them there)
        self.layer_map = self._resolve_layer_map(layer_map) if hidden_weight > 0 else {}
        self._logit_cache: dict[bytes, torch.Tensor] = {}
        self._cache_fingerprint: str | None = None

    def model_card_facts(self) -> dict[str, str]:
        """As the fine-tuning module's, but a student that starts as a copy of the teacher has the teacher as base."""
        facts = super().model_card_facts()
        if self.hparams.student_init == "teacher" and self.hparams.teacher:
            facts["base_model"] = str(self.hparams.teacher)
        return facts

    def _build_model(self, name: str, num_labels: int, trust_remote_code: bool) -> nn.Module:
        """Load the teacher (as ``self.teacher``) and build the student from it or from ``name``."""
        if self.hparams.teacher is None:  # the teacher is a snapshot of the student, taken during fit
            self.teacher: nn.Module | None = None
            return super()._build_model(name, num_labels, trust_remote_code)
        teacher = load_teacher(self.hparams.teacher, trust_remote_code)
        data_config = load_pretrained(AutoConfig, name, trust_remote_code=trust_remote_code)
        if teacher.config.num_labels != num_labels:
            raise ValueError(
                f"Teacher {self.hparams.teacher!r} has num_labels={teacher.config.num_labels}, but the student for task "
                f"{self.task.name!r} has {num_labels}: use a teacher fine-tuned on the same task."
            )
        if teacher.config.vocab_size != data_config.vocab_size:
            raise ValueError(
                f"Teacher {self.hparams.teacher!r} has a vocabulary of {teacher.config.vocab_size} tokens, but "
                f"{name!r} (whose tokenizer prepares the data) has {data_config.vocab_size}: teacher and student must "
                "share a tokenizer."
            )
        if self.hparams.student_init == "teacher":
            student = copy.deepcopy(teacher).requires_grad_(True)
            student.config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
            student.train()
        else:
            student = super()._build_model(name, num_labels, trust_remote_code)
        if self.hparams.hidden_weight > 0 and teacher.config.hidden_size != student.config.hidden_size:
            raise ValueError(
                f"hidden_weight > 0 compares hidden states, but the teacher's hidden size is {teacher.config.hidden_size} "
                f"and the student's {student.config.hidden_size}: set hidden_weight to 0."
            )
        self.teacher = teacher
        return student

    def _resolve_layer_map(self, layer_map: dict[int, int] | None) -> dict[int, int]:
        student_layers = self.model.config.num_hidden_layers
        # A snapshot teacher is a copy of the student: the same depth.
        teacher_layers = self.teacher.config.num_hidden_layers if self.teacher is not None else student_layers
        if layer_map is None:
            if student_layers != teacher_layers:
                raise ValueError(
                    f"The student has {student_layers} layers and the teacher {teacher_layers}: give layer_map "
                    f"({{student layer: teacher layer}}, 0 = embeddings), e.g. {{{student_layers}: {teacher_layers}}}."
                )
            layers = range(student_layers + 1) if self.hparams.hidden_layers == "all" else [student_layers]
            return {layer: layer for layer in layers}
        bad = {s: t for s, t in layer_map.items() if not (0 <= s <= student_layers and 0 <= t <= teacher_layers)}
        if bad:
            raise ValueError(
                f"layer_map entries {bad} are out of range: student layers are 0..{student_layers}, teacher layers "
                f"0..{teacher_layers} (0 = embeddings)."
            )
        return {int(s): int(t) for s, t in layer_map.items()}

    def train(self, mode: bool = True) -> DistillationModule:
        """Set the student's mode; the teacher stays in eval mode (dropout would make its targets noisy)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @torch.no_grad()
    def snapshot_teacher(self) -> None:
        """The teacher becomes a frozen copy of the student as it is now (``teacher_snapshot_epoch``)."""
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._logit_cache.clear()
        self._cache_fingerprint = None

    def on_train_epoch_start(self) -> None:
        snapshot_epoch = self.hparams.teacher_snapshot_epoch
        if snapshot_epoch is not None and self.teacher is None and self.current_epoch >= snapshot_epoch:
            self.snapshot_teacher()
            rank_zero_info(
                f"DistillationModule: the teacher is the student as it was at the start of epoch {self.current_epoch}."
            )

    # ---- training ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_outputs(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The teacher's logits for a batch (from the cache when enabled) and, with hidden_weight > 0, its hidden states."""
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        if self.hparams.cache_teacher_logits:
            return self._cached_teacher_logits(inputs), None
        output = self.teacher(**inputs, output_hidden_states=bool(self.layer_map))
        return output.logits, output.hidden_states

    def _cached_teacher_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        keys = example_keys(inputs)
        missing = [row for row, key in enumerate(keys) if key not in self._logit_cache]
        if missing:
            logits = self.teacher(**{k: v[missing] for k, v in inputs.items()}).logits
            self._logit_cache.update({keys[row]: row_logits for row, row_logits in zip(missing, logits)})
        return torch.stack([self._logit_cache[key] for key in keys])

    def on_train_start(self) -> None:
        if not self.hparams.cache_teacher_logits or self.teacher is None:
            return
        # Another teacher (or changed teacher weights) since the cache was filled makes every entry stale.
        fingerprint = weights_fingerprint(self.teacher)
        if fingerprint != self._cache_fingerprint:
            self._logit_cache.clear()
            self._cache_fingerprint = fingerprint

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.teacher is None:  # before teacher_snapshot_epoch: the plain task loss
            return super().training_step(batch, batch_idx)
        inputs = self._model_inputs(batch)
        student = self.model(**inputs, output_hidden_states=bool(self.layer_map))
        teacher_logits, teacher_hidden = self.teacher_outputs(inputs)
        alpha = self.hparams.alpha
        logit_weight = 1 - alpha if self.hparams.logit_weight is None else self.hparams.logit_weight
        losses = {
            "task_loss": student.loss,
            "kd_loss": kd_loss(student.logits, teacher_logits, self.hparams.temperature, self.task.is_regression),
        }
        loss = alpha * losses["task_loss"] + logit_weight * losses["kd_loss"]
        if self.layer_map:
            losses["hidden_loss"] = hidden_state_loss(
                student.hidden_states,
                teacher_hidden,
                self.layer_map,
                inputs["attention_mask"],
                normalized=self.hparams.hidden_loss == "normalized",
            )
            loss = loss + self.hparams.hidden_weight * losses["hidden_loss"]
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{name}": value for name, value in losses.items()})
        return loss

    # ---- checkpoints: the student and a reference to the teacher ------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._logit_cache:
            # A teacher's logits depend, in the last bits, on the batch they were computed in (its padded length and
            # size); refilled after a resume from other batches, they would make the resumed fit drift from the one
            # never stopped (the main job: 0.2 dev points on STS-B). Small: one row of logits per training example.
            checkpoint[LOGIT_CACHE_KEY] = {
                "fingerprint": weights_fingerprint(self.teacher),
                "keys": torch.frombuffer(bytearray(b"".join(self._logit_cache)), dtype=torch.uint8).view(
                    len(self._logit_cache), -1
                ),
                "logits": torch.stack(list(self._logit_cache.values())),
            }
        teacher_state = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("teacher.")}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in teacher_state}
        if self.hparams.teacher is None:  # a snapshot cannot be reloaded from anywhere else: keep its weights
            if teacher_state:
                checkpoint["teacher_snapshot"] = {k.removeprefix("teacher."): v for k, v in teacher_state.items()}
            return
        checkpoint["teacher"] = {"path": str(Path(self.hparams.teacher).expanduser().resolve()),
                                 "fingerprint": weights_fingerprint(self.teacher)}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill in the teacher's weights from the teacher itself, so that strict loading of the student works; take
        back the cached teacher logits (kept only if the teacher at train start is the one they came from)."""
        cache = checkpoint.get(LOGIT_CACHE_KEY)
        if cache is not None:
            self._logit_cache = {bytes(key.tolist()): logits for key, logits in zip(cache["keys"], cache["logits"])}
            self._cache_fingerprint = cache["fingerprint"]
        if self.hparams.teacher is None:
            snapshot = checkpoint.get("teacher_snapshot")
            if snapshot is not None:  # taken before this checkpoint: rebuild it, then load the student beside it
                self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
                self.teacher.load_state_dict(snapshot)
                checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in snapshot.items()})
            super().on_load_checkpoint(checkpoint)
            return
        reference = checkpoint.get("teacher", {})
        if reference.get("fingerprint") not in (None, weights_fingerprint(self.teacher)):
            rank_zero_warn(
                f"The teacher {self.hparams.teacher!r} is not the one this checkpoint was trained with (that was "
                f"{reference.get('path')!r}; the weights differ). Validate/test/predict use the student only; a resumed "
                "fit distills from the teacher loaded now."
            )
        checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        super().on_load_checkpoint(checkpoint)
