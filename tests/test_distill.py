"""DistillationModule: frozen teacher, KD loss, teacher-logit cache, checkpoints, and the 2:4 pipeline end to end."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import REPO, KillAfter, Killed, text_loader, toy_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification as AutoClassifier
from transformers import BertConfig, BertForSequenceClassification

import cli
from callbacks import HardPruneCallback, NxMSparsifyCallback
from nxm_lightning import DistillationModule, SequenceClassificationModule
from nxm_lightning.sparsity.nxm import is_nxm
from nxm_lightning.sparsity.verify import verify
from nxm_lightning.tasks.distill import LOGIT_CACHE_KEY, example_keys, hidden_state_loss, kd_loss, weights_fingerprint
from nxm_lightning.tasks.hub import DEFAULT_MODEL, resolve_model_name


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def save_bert(path: Path, vocab_size: int = 30522, hidden: int = 32, layers: int = 2, num_labels: int = 1) -> Path:
    """A tiny random BERT with a non-default shape (conftest's save_tiny_bert covers the usual ones)."""
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128, num_labels=num_labels)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    return path


# ---- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -0.1}, "alpha=-0.1 must be in"),
        ({"alpha": 1.5}, "alpha=1.5 must be in"),
        ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
        ({"temperature": -2.0}, "temperature=-2.0 must be > 0"),
        ({"hidden_weight": -1.0}, "hidden_weight=-1.0 must be >= 0"),
        ({"layer_map": {1: 1}}, "hidden_weight is 0"),
        ({"student_init": "random"}, "student_init='random' is not valid"),
        ({"cache_teacher_logits": True, "hidden_weight": 1.0}, "turn one of them off"),
        ({"logit_weight": -1.0}, "logit_weight=-1.0 must be >= 0"),
        (
            {"hidden_weight": 1.0, "hidden_loss": "cosine"},
            r"hidden_loss='cosine' is not valid; choose one of \['mse', 'normalized'\]",
        ),
        (
            {"hidden_weight": 1.0, "hidden_layers": "first"},
            r"hidden_layers='first' is not valid; choose one of \['all', 'last'\]",
        ),
        ({"hidden_weight": 1.0, "hidden_layers": "last", "layer_map": {2: 2}}, "keep one"),
        ({"alpha": 0.0, "logit_weight": 0.0}, "all 0: nothing would be trained"),
    ],
)
def test_bad_arguments(tiny_bert: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillationModule(str(tiny_bert), teacher=str(tiny_bert), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Give exactly one teacher"),
        ({"teacher": "exports/glue_dense", "teacher_snapshot_epoch": 2}, "Give exactly one teacher"),
        ({"teacher_snapshot_epoch": 0, "student_init": "pretrained"}, "teacher_snapshot_epoch=0 must be >= 1"),
        ({"teacher_snapshot_epoch": 2}, "set student_init: pretrained"),
    ],
)
def test_bad_teacher_choice(tiny_bert: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillationModule(str(tiny_bert), **kwargs)


def test_missing_teacher_path(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Teacher .*nowhere.* not found"):
        DistillationModule(str(tiny_bert), teacher=str(tmp_path / "nowhere"))


def test_teacher_with_other_num_labels(tiny_bert: Path, tiny_bert_2labels: Path) -> None:
    with pytest.raises(ValueError, match="num_labels=2, but the student for task 'stsb' has 1"):
        DistillationModule(str(tiny_bert), task_name="stsb", teacher=str(tiny_bert_2labels))


def test_teacher_with_other_vocabulary(tiny_bert: Path, tmp_path: Path) -> None:
    teacher = save_bert(tmp_path / "teacher", vocab_size=1000)
    for student_init in ("teacher", "pretrained"):
        with pytest.raises(ValueError, match="vocabulary of 1000 tokens, but .* has 30522"):
            DistillationModule(str(tiny_bert), teacher=str(teacher), student_init=student_init)


def test_hidden_state_distillation_checks_shapes(tiny_bert: Path, tmp_path: Path) -> None:
    hidden = {"student_init": "pretrained", "hidden_weight": 1.0}
    deep = save_bert(tmp_path / "deep", layers=4)
    with pytest.raises(ValueError, match="student has 2 layers and the teacher 4: give layer_map"):
        DistillationModule(str(tiny_bert), teacher=str(deep), **hidden)
    with pytest.raises(ValueError, match=r"entries \{3: 4\} are out of range"):
        DistillationModule(str(tiny_bert), teacher=str(deep), layer_map={3: 4}, **hidden)
    wide = save_bert(tmp_path / "wide", hidden=64)
    with pytest.raises(ValueError, match="hidden size is 64 and the student's 32"):
        DistillationModule(str(tiny_bert), teacher=str(wide), **hidden)
    module = DistillationModule(str(tiny_bert), teacher=str(deep), layer_map={1: 2, 2: 4}, **hidden)
    assert module.layer_map == {1: 2, 2: 4}


# ---- the loss ---------------------------------------------------------------------------------------------------


def test_kd_loss_equals_hand_computed_value() -> None:
    # Teacher odds 3:1, student undecided, T = 2: p = softmax([ln 3 / 2, 0]) = [sqrt3, 1] / (sqrt3 + 1), q = [1/2, 1/2].
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    expected = 4 * sum(pi * math.log(pi / 0.5) for pi in p)
    assert expected == pytest.approx(0.145363, abs=1e-6)
    teacher, student = torch.tensor([[math.log(3), 0.0]]), torch.zeros(1, 2)
    assert float(kd_loss(student, teacher, 2.0, regression=False)) == pytest.approx(expected, rel=1e-6)
    # batchmean: a batch of two identical examples has the same per-example loss; regression is the MSE of the scores.
    assert float(kd_loss(student.repeat(2, 1), teacher.repeat(2, 1), 2.0, regression=False)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_loss(torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0], [4.0]]), 2.0, regression=True)) == pytest.approx(2.5)


def training_step_on_a_batch(module: DistillationModule, model_dir: Path) -> tuple[torch.Tensor, dict, dict]:
    """``module.training_step`` in eval mode (no dropout: a hand computation sees the same outputs) on one batch of
    RTE-like text: the loss, the batch and its model inputs (the batch without labels)."""
    module.eval()
    batch = next(iter(text_loader(model_dir, regression=False)))
    with pytest.warns(UserWarning, match="self.log"):
        loss = module.training_step(batch, 0)
    return loss, batch, {k: v for k, v in batch.items() if k != "labels"}


def test_training_step_is_alpha_task_plus_kd(tiny_bert_2labels: Path) -> None:
    torch.manual_seed(0)
    module = DistillationModule(
        str(tiny_bert_2labels), task_name="rte", teacher=str(tiny_bert_2labels), alpha=0.3, temperature=2.0
    )
    with torch.no_grad():
        module.model.classifier.bias.copy_(torch.tensor([1.0, -1.0]))  # a student that disagrees with its teacher
    loss, batch, inputs = training_step_on_a_batch(module, tiny_bert_2labels)
    with torch.no_grad():
        student, teacher = module.model(**inputs).logits, module.teacher(**inputs).logits
    task = F.cross_entropy(student, batch["labels"])
    p, log_q = F.softmax(teacher / 2, -1), F.log_softmax(student / 2, -1)
    kl = (p * (p.log() - log_q)).sum() / len(p)
    assert float(kl) > 0.01
    assert float(loss) == pytest.approx(float(0.3 * task + 0.7 * 4 * kl), rel=1e-5)


def test_hidden_state_loss_equals_hand_computed_values() -> None:
    # Two layers, one example of three tokens, the last padding; hidden size 2.
    teacher = (torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]]), torch.tensor([[[3.0, 4.0], [0.0, 0.0], [9.0, 9.0]]]))
    student = (torch.tensor([[[1.0, 2.0], [2.0, 1.0], [0.0, 0.0]]]), torch.tensor([[[3.0, 2.0], [0.0, 0.0], [0.0, 0.0]]]))
    mask = torch.tensor([[1, 1, 0]])
    # Squared errors over real tokens: layer 0: 1 + 1 = 2, layer 1: 4; energies: layer 0: 1 + 1 + 4 = 6, layer 1: 25.
    both = {0: 0, 1: 1}
    assert float(hidden_state_loss(student, teacher, both, mask)) == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert float(hidden_state_loss(student, teacher, both, mask, normalized=True)) == pytest.approx((2 / 6 + 4 / 25) / 2)
    assert float(hidden_state_loss(student, teacher, {1: 1}, mask, normalized=True)) == pytest.approx(4 / 25)
    # A map across layers compares student layer 0 with teacher layer 1: (2^2 + 2^2 + 2^2 + 1^2) / 25.
    assert float(hidden_state_loss(student, teacher, {0: 1}, mask, normalized=True)) == pytest.approx(13 / 25)


@pytest.mark.parametrize(("hidden_layers", "expected_map"), [("all", {0: 0, 1: 1, 2: 2}), ("last", {2: 2})])
def test_feature_only_training_step_equals_hand_computed_loss(
    tiny_bert_2labels: Path, hidden_layers: str, expected_map: dict[int, int]
) -> None:
    """alpha 0 and logit_weight 0 leave only hidden_weight times the normalized hidden-state loss."""
    torch.manual_seed(0)
    module = DistillationModule(
        str(tiny_bert_2labels), task_name="rte", teacher=str(tiny_bert_2labels), alpha=0.0, logit_weight=0.0,
        hidden_weight=2.0, hidden_loss="normalized", hidden_layers=hidden_layers,
    )  # fmt: skip
    assert module.layer_map == expected_map
    with torch.no_grad():  # a student that differs from its teacher in every layer
        for parameter in module.model.bert.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    loss, batch, inputs = training_step_on_a_batch(module, tiny_bert_2labels)
    with torch.no_grad():
        student = module.model(**inputs, output_hidden_states=True).hidden_states
        teacher = module.teacher(**inputs, output_hidden_states=True).hidden_states
    real = inputs["attention_mask"].unsqueeze(-1).float()
    ratios = [((student[i] - teacher[i]) ** 2 * real).sum() / (teacher[i] ** 2 * real).sum() for i in expected_map]
    assert float(min(ratios)) > 1e-4
    assert float(loss) == pytest.approx(2.0 * float(sum(ratios)) / len(ratios), rel=1e-5)


def test_logit_weight_replaces_one_minus_alpha(tiny_bert_2labels: Path) -> None:
    torch.manual_seed(0)
    module = DistillationModule(
        str(tiny_bert_2labels), task_name="rte", teacher=str(tiny_bert_2labels), alpha=1.0, logit_weight=3.0
    )
    with torch.no_grad():
        module.model.classifier.bias.copy_(torch.tensor([1.0, -1.0]))
    loss, batch, inputs = training_step_on_a_batch(module, tiny_bert_2labels)
    with torch.no_grad():
        student, teacher = module.model(**inputs).logits, module.teacher(**inputs).logits
    expected = F.cross_entropy(student, batch["labels"]) + 3.0 * kd_loss(student, teacher, 2.0, regression=False)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


# ---- the teacher stays frozen -----------------------------------------------------------------------------------


class TeacherWatch(Callback):
    """After every backward pass: the teacher has no gradients and is in eval mode; the student has gradients."""

    def __init__(self) -> None:
        self.checked = 0

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert all(p.grad is None and not p.requires_grad for p in pl_module.teacher.parameters())
        assert not any(m.training for m in pl_module.teacher.modules())
        assert pl_module.model.training and pl_module.model.classifier.weight.grad is not None
        self.checked += 1


def test_teacher_is_bit_identical_after_training_and_gets_no_gradient(tiny_bert: Path, tmp_path: Path) -> None:
    module = DistillationModule(str(tiny_bert), teacher=str(tiny_bert), hidden_weight=1.0, learning_rate=1e-3)
    teacher_before, student_before = state(module.teacher), state(module.model)
    assert_same(teacher_before, student_before)  # student_init="teacher"
    watch = TeacherWatch()
    trainer = toy_trainer(tmp_path, [watch], max_epochs=2, enable_checkpointing=False)
    trainer.fit(module, text_loader(tiny_bert, shuffle=True), text_loader(tiny_bert))
    assert watch.checked == 8
    assert_same(state(module.teacher), teacher_before)
    assert not torch.equal(module.model.classifier.weight, student_before["classifier.weight"])
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in module.teacher.parameters()}
    assert optimized == {id(p) for p in module.model.parameters()}


class TeacherLog(Callback):
    """Records, at every training step, whether a teacher exists and the student's weights then."""

    def __init__(self) -> None:
        self.has_teacher: list[bool] = []
        self.student_at_epoch_start: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.student_at_epoch_start[trainer.current_epoch] = state(pl_module.model)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.has_teacher.append(pl_module.teacher is not None)


def snapshot_module(tiny_bert: Path) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(str(tiny_bert), teacher_snapshot_epoch=1, student_init="pretrained", learning_rate=1e-3,
                              cache_teacher_logits=True)  # fmt: skip


def test_teacher_snapshot_is_the_student_at_that_epoch_then_frozen(tiny_bert: Path, tmp_path: Path) -> None:
    module = snapshot_module(tiny_bert)
    assert module.teacher is None
    log = TeacherLog()
    trainer = toy_trainer(tmp_path, [log], max_epochs=3, enable_checkpointing=False)
    trainer.fit(module, text_loader(tiny_bert, shuffle=True))
    assert log.has_teacher == [False] * 4 + [True] * 8  # 4 steps an epoch: task loss alone in epoch 0
    assert_same(state(module.teacher), log.student_at_epoch_start[1])  # not changed since, though the student was
    assert not torch.equal(module.model.classifier.weight, module.teacher.classifier.weight)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in module.teacher.parameters()}


def test_teacher_snapshot_survives_a_resume(tiny_bert: Path, tmp_path: Path) -> None:
    straight = snapshot_module(tiny_bert)
    toy_trainer(tmp_path / "a", [], max_epochs=3, enable_checkpointing=False).fit(straight, text_loader(tiny_bert))
    killed = snapshot_module(tiny_bert)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)
    with pytest.raises(Killed):  # after the snapshot (epoch 1) and its checkpoint
        toy_trainer(tmp_path / "b", [checkpoints, KillAfter(2)], max_epochs=3).fit(killed, text_loader(tiny_bert))
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert saved["teacher_snapshot"].keys() == straight.teacher.state_dict().keys()
    assert not any(k.startswith("teacher.") for k in saved["state_dict"])
    resumed, log = snapshot_module(tiny_bert), TeacherLog()
    toy_trainer(tmp_path / "b", [log], max_epochs=3, enable_checkpointing=False).fit(
        resumed, text_loader(tiny_bert), ckpt_path=tmp_path / "b" / "last.ckpt"
    )
    assert log.has_teacher == [True] * 4  # distilling from the first resumed step, from the snapshot of epoch 1
    assert_same(state(resumed.teacher), state(straight.teacher))


def test_train_mode_never_reaches_the_teacher(tiny_bert: Path) -> None:
    module = DistillationModule(str(tiny_bert), teacher=str(tiny_bert)).train()
    assert module.model.training and not any(m.training for m in module.teacher.modules())


def test_sparsify_targets_only_student_layers(tiny_bert: Path, tmp_path: Path) -> None:
    module = DistillationModule(str(tiny_bert), teacher=str(tiny_bert))
    sparsify = NxMSparsifyCallback(pattern="2:4")
    sparsify.setup(toy_trainer(tmp_path, [sparsify]), module, "fit")
    names = [t.name for t in sparsify.targets]
    assert len(names) == 12  # 2 blocks x (query, key, value, attention output, intermediate, output)
    assert all(name.startswith("model.bert.encoder.layer.") for name in names)


def test_teacher_from_lightning_checkpoint(tiny_bert: Path, tmp_path: Path) -> None:
    dense = SequenceClassificationModule(str(tiny_bert), learning_rate=1e-3)
    trainer = toy_trainer(tmp_path, [], max_steps=2, enable_checkpointing=False)
    trainer.fit(dense, text_loader(tiny_bert))
    trainer.save_checkpoint(tmp_path / "dense.ckpt")
    module = DistillationModule(str(tiny_bert), teacher=str(tmp_path / "dense.ckpt"))
    assert_same(state(module.teacher), state(dense.model))
    assert_same(state(module.model), state(dense.model))


# ---- the teacher-logit cache ------------------------------------------------------------------------------------


def test_example_keys_ignore_padding_and_batch_position(tiny_bert: Path) -> None:
    rows = list(text_loader(tiny_bert, n=4, batch_size=1))
    together = next(iter(text_loader(tiny_bert, n=4, batch_size=4)))
    assert together["input_ids"].shape[1] > rows[0]["input_ids"].shape[1]  # padded in the batch, not alone
    assert example_keys(together) == [example_keys(row)[0] for row in rows]
    assert len(set(example_keys(together))) == 4


@pytest.mark.parametrize("cache", [False, True])
def test_cache_computes_teacher_logits_once_per_example(tiny_bert: Path, tmp_path: Path, cache: bool) -> None:
    module = DistillationModule(str(tiny_bert), teacher=str(tiny_bert), cache_teacher_logits=cache)
    seen: list[int] = []
    module.teacher.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(len(kwargs["input_ids"])), with_kwargs=True)
    trainer = toy_trainer(tmp_path, [], max_epochs=3, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, text_loader(tiny_bert, n=16, shuffle=True))
    assert sum(seen) == (16 if cache else 48)
    assert len(module._logit_cache) == (16 if cache else 0)


def test_cached_logits_equal_fresh_ones_and_follow_the_teacher(tiny_bert: Path) -> None:
    module = DistillationModule(str(tiny_bert), teacher=str(tiny_bert), cache_teacher_logits=True)
    module.on_train_start()
    fill = next(iter(text_loader(tiny_bert, n=8, batch_size=8)))
    module.teacher_outputs(fill)
    # The same examples, alone (other padding) and with labels: served from the cache, equal to a fresh forward pass.
    for row in text_loader(tiny_bert, n=8, batch_size=1):
        cached, _ = module.teacher_outputs(row)
        fresh = module.teacher(**{k: v for k, v in row.items() if k != "labels"}).logits
        torch.testing.assert_close(cached, fresh, atol=1e-5, rtol=1e-5)
    assert len(module._logit_cache) == 8
    module.on_train_start()  # a new fit with the same teacher keeps the cache
    assert len(module._logit_cache) == 8
    with torch.no_grad():
        module.teacher.classifier.bias.add_(1.0)
    module.on_train_start()  # another teacher: every entry is stale
    assert module._logit_cache == {}
    assert module._cache_fingerprint == weights_fingerprint(module.teacher)


def test_the_cache_travels_in_the_checkpoint_for_an_exact_resume(tiny_bert: Path, tmp_path: Path) -> None:
    """Refilled after a resume, from other batches (other padding), the logits differed in their last bits and the
    resumed main job drifted from the one never stopped."""
    module = DistillationModule(str(tiny_bert), teacher=str(tiny_bert), cache_teacher_logits=True)
    trainer = toy_trainer(tmp_path, [], max_epochs=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, text_loader(tiny_bert, n=16, shuffle=True))
    trainer.save_checkpoint(tmp_path / "kd.ckpt")
    saved = torch.load(tmp_path / "kd.ckpt", weights_only=True)
    assert saved[LOGIT_CACHE_KEY]["logits"].shape[0] == 16
    resumed = DistillationModule(str(tiny_bert), teacher=str(tiny_bert), cache_teacher_logits=True)
    resumed.on_load_checkpoint(saved)
    resumed.on_train_start()  # the same teacher: the cache is kept
    assert resumed._logit_cache.keys() == module._logit_cache.keys()
    for key, logits in module._logit_cache.items():
        assert torch.equal(resumed._logit_cache[key], logits)
    other = DistillationModule(str(tiny_bert), teacher=str(tiny_bert), cache_teacher_logits=True)
    with torch.no_grad():
        other.teacher.classifier.bias.add_(1.0)
    other.on_load_checkpoint(torch.load(tmp_path / "kd.ckpt", weights_only=True))
    other.on_train_start()  # another teacher: its logits would be wrong
    assert other._logit_cache == {}


# ---- end to end: ADMM + hard prune + export; checkpoints --------------------------------------------------------


def test_distilled_student_is_pruned_2to4_exported_and_reloadable(tiny_bert: Path, tmp_path: Path) -> None:
    module = DistillationModule(str(tiny_bert), teacher=str(tiny_bert), learning_rate=1e-3, cache_teacher_logits=True)
    teacher_before = state(module.teacher)
    sparsify = NxMSparsifyCallback(pattern="2:4", penalty="decoupled", rho=0.05, update_every=2, end_fraction=0.5)
    prune = HardPruneCallback(backend="masked", export_dir=str(tmp_path / "export"))
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    trainer = toy_trainer(tmp_path, [sparsify, prune, checkpoint], max_epochs=2)
    trainer.fit(module, text_loader(tiny_bert, shuffle=True), text_loader(tiny_bert))

    assert all(t.name.startswith("model.") for t in sparsify.targets)
    assert verify(tmp_path / "export") == []
    exported = AutoClassifier.from_pretrained(tmp_path / "export")
    assert is_nxm(exported.bert.encoder.layer[0].attention.self.query.weight, 2, 4)
    assert_same(state(module.teacher), teacher_before)  # dense, untouched

    saved = torch.load(checkpoint.last_model_path, weights_only=True)
    assert not any(k.startswith("teacher.") for k in saved["state_dict"])
    assert saved["teacher"] == {"path": str(tiny_bert.resolve()), "fingerprint": weights_fingerprint(module.teacher)}
    reloaded = DistillationModule.load_from_checkpoint(checkpoint.last_model_path)
    assert is_nxm(reloaded.model.bert.encoder.layer[1].output.dense.weight, 2, 4)
    assert_same(state(reloaded.teacher), teacher_before)
    scores = toy_trainer(tmp_path, [HardPruneCallback()]).validate(
        DistillationModule(str(tiny_bert), teacher=str(tiny_bert)), text_loader(tiny_bert), ckpt_path=checkpoint.last_model_path
    )
    assert "val/score" in scores[0]


def test_checkpoint_of_another_teacher_warns(tiny_bert: Path, tmp_path: Path) -> None:
    module = DistillationModule(str(tiny_bert), teacher=str(tiny_bert))
    trainer = toy_trainer(tmp_path, [], max_steps=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, text_loader(tiny_bert))
    trainer.save_checkpoint(tmp_path / "kd.ckpt")
    other = save_bert(tmp_path / "other")
    with pytest.warns(UserWarning, match="not the one this checkpoint was trained with"):
        DistillationModule.load_from_checkpoint(tmp_path / "kd.ckpt", teacher=str(other))


# ---- configs/glue_kd.yaml through the CLI -----------------------------------------------------------------------


def cli_run(subcommand: str, config: Path, model: str, teacher: Path, glue_dir: Path, *extra: str) -> cli.NxMLightningCLI:
    return cli.main([
        subcommand, "--config", str(config), "--model.init_args.model_name_or_path", model,
        "--model.init_args.teacher", str(teacher), "--data.data_dir", str(glue_dir), "--data.max_eval_samples", "16",
        "--data.max_seq_length", "32", "--data.eval_batch_size", "16", *extra,
    ])  # fmt: skip


def glue_kd_with_a_zstep_every_step(tmp_path: Path) -> Path:
    """configs/glue_kd.yaml with a Z-step at every step: the test trains 4 steps, too few for one every 20."""
    config = yaml.safe_load((REPO / "configs" / "glue_kd.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"]["update_every"] = 1
    path = tmp_path / "glue_kd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("real", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["tiny", "minilm"])
def test_glue_kd_config_fits_exports_and_validates(
    glue_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, real: bool
) -> None:
    monkeypatch.chdir(tmp_path)  # the config writes runs/ and exports/ relative to the working directory
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # LightningCLI warns when pytest's arguments sit beside args=
    if real:
        model = DEFAULT_MODEL
        teacher = tmp_path / "minilm_teacher"
        AutoClassifier.from_pretrained(resolve_model_name(DEFAULT_MODEL), num_labels=1).save_pretrained(teacher)
    else:
        model, teacher = str(tiny_bert), tiny_bert
    config = glue_kd_with_a_zstep_every_step(tmp_path)
    cli_run("fit", config, model, teacher, glue_dir, "--data.max_train_samples", "16", "--data.batch_size", "4",
            "--trainer.max_epochs=1")  # fmt: skip
    assert verify(tmp_path / "exports" / "glue_kd") == []
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    validated = cli_run("validate", config, model, teacher, glue_dir, "--ckpt_path", str(last))
    assert isinstance(validated.model, DistillationModule)
    assert "val/score" in validated.trainer.callback_metrics
