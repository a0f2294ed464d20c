"""The README.md model card of every export folder: front matter and sections, from facts and from real runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ToyModule, text_loader, toy_loader, toy_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

import callbacks._export
from callbacks import HardPruneCallback, SavePretrainedCallback
from nxm_lightning.sparsity.model_card import (
    CardFacts,
    card_facts,
    layer_kinds,
    library_version,
    pipeline_tag,
    recorded_scores,
    render_model_card,
)
from nxm_lightning.tasks.card import recorded_task
from nxm_lightning.tasks.distill import DistillationModule
from nxm_lightning.tasks.module import SequenceClassificationModule


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def manifest() -> dict:
    def entry(pattern: str, nonzeros: int) -> dict:
        return {"pattern": pattern, "layout": "out_in", "shape": [8, 8], "nonzeros": nonzeros, "numel": 64}

    layers = {f"bert.encoder.layer.{i}.attention.self.query.weight": entry("2:4", 32) for i in range(2)}
    layers |= {f"bert.encoder.layer.{i}.intermediate.dense.weight": entry("1:4", 16) for i in range(2)}
    return {"layers": layers, "overall_density": 96 / 256}


FACTS = CardFacts(
    architecture="BertForSequenceClassification", base_model="sentence-transformers/all-MiniLM-L6-v2",
    task="GLUE STS-B (stsb)", labels=("score",), score_name="dev score (points: mean of pearson, spearmanr)",
    scores={"before the cut": 85.9, "after the cut": 85.78}, command="python cli.py fit --config configs/glue.yaml",
    library_version="0.1.0",
)  # fmt: skip


def test_card_fields() -> None:
    card = render_model_card(FACTS, manifest())
    meta = front_matter(card)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert {"nxm-lightning", "sparse", "1:4-sparsity", "2:4-sparsity"} <= set(meta["tags"])
    assert "- **Task:** GLUE STS-B (stsb)" in card and "- **Labels:** 0: `score`" in card
    assert "| `bert.encoder.layer.*.attention.self.query` | 2:4 | 2 | 0.5000 |" in card
    assert "| `bert.encoder.layer.*.intermediate.dense` | 1:4 | 2 | 0.2500 |" in card
    assert "Overall density of the N:M layers: 0.3750" in card
    assert "| when | dev score (points: mean of pearson, spearmanr) |" in card
    assert "| before the cut | 85.90 |" in card and "| after the cut | 85.78 |" in card
    assert "```bash\npython cli.py fit --config configs/glue.yaml\n```" in card
    assert "nxm-lightning 0.1.0" in card


def test_task_and_scores_read_back_from_the_card() -> None:
    """What the score command reads: the task to score on, and the scores to print beside its own."""
    card = render_model_card(FACTS, manifest())
    assert recorded_task(card) == "stsb" and recorded_scores(card) == FACTS.scores
    bare = render_model_card(CardFacts(architecture="BertModel"), None)
    assert recorded_task(bare) is None and recorded_scores(bare) == {}


def test_local_base_dense_model_and_unknown_head(tmp_path: Path) -> None:
    facts = CardFacts(architecture="BertModel", base_model=str(tmp_path), scores={})
    card = render_model_card(facts, None)
    meta = front_matter(card)
    assert "base_model" not in meta  # the Hub wants a model id there, not a local folder
    assert f"- **Base model:** `{tmp_path}`" in card
    assert "pipeline_tag" not in meta and meta["tags"] == ["nxm-lightning"]
    assert "Dense: no N:M sparsity" in card and "Not measured" in card


@pytest.mark.parametrize(
    ("architecture", "tag"),
    [("LlamaForCausalLM", "text-generation"), ("GPT2LMHeadModel", "text-generation"), ("BertForMaskedLM", "fill-mask"),
     ("GPT2ForSequenceClassification", "text-classification"), ("BertModel", None)],
)  # fmt: skip
def test_pipeline_tag(architecture: str, tag: str | None) -> None:
    assert pipeline_tag(architecture) == tag


def test_layer_kinds_merge_indices_across_layer_groups() -> None:
    entry = {"pattern": "2:4", "nonzeros": 4, "numel": 8}
    albert = {"albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight": entry}
    assert layer_kinds({"layers": albert}) == [("albert.encoder.albert_layer_groups.*.albert_layers.*.ffn", "2:4", 1, 0.5)]


def test_facts_from_the_lightning_module(tiny_bert: Path) -> None:
    module = SequenceClassificationModule(str(tiny_bert), "stsb")
    facts = card_facts(module.model, module, {"after the cut": 1.0}, command="python x.py")
    assert facts.base_model == str(tiny_bert) and facts.task == "GLUE STS-B (stsb)" and facts.labels == ("score",)
    assert facts.architecture == "BertForSequenceClassification" and "pearson" in facts.score_name
    assert facts.command == "python x.py" and facts.library_version == library_version()


def test_the_task_layer_tells_the_task_facts(tiny_bert: Path, tmp_path: Path) -> None:
    """The core's card_facts knows no task: the module's model_card_facts tells base model, task and score name."""
    module = SequenceClassificationModule(str(tiny_bert), "rte")
    assert module.model_card_facts() == {"base_model": str(tiny_bert), "task": "GLUE RTE (rte)",
                                         "score_name": "dev score (points: mean of accuracy)"}  # fmt: skip
    # A student that starts as a copy of its teacher was fine-tuned from the teacher, not from model_name_or_path.
    teacher = shutil.copytree(tiny_bert, tmp_path / "teacher")
    student = DistillationModule(str(tiny_bert), teacher=str(teacher), task_name="stsb", student_init="teacher")
    assert card_facts(student.model, student).base_model == str(teacher)
    pretrained = DistillationModule(str(tiny_bert), teacher=str(teacher), task_name="stsb", student_init="pretrained")
    assert card_facts(pretrained.model, pretrained).base_model == str(tiny_bert)
    # Any other module: what the model's config says, and no task.
    plain = torch.nn.Module()
    facts = card_facts(module.model, plain)
    assert facts.base_model == module.model.config.name_or_path and facts.task is None and facts.score_name == "dev score"


def test_hard_prune_export_card_has_the_scores_around_the_cut(tiny_bert: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = SequenceClassificationModule(str(tiny_bert), "stsb", learning_rate=1e-3)
    prune = HardPruneCallback(at_step=2, backend="masked", export_dir=str(tmp_path / "export"))
    trainer = toy_trainer(tmp_path, [prune], max_steps=4, enable_checkpointing=False)
    trainer.fit(module, text_loader(tiny_bert), text_loader(tiny_bert))
    card = (tmp_path / "export" / "README.md").read_text()
    assert set(prune.scores) == {"before the cut", "after the cut"}
    # The exported (final) weights' own score: the validation at the end of the last epoch (4 batches an epoch).
    final = float(trainer.callback_metrics["val/score"])
    assert f"| exported model (epoch 0, its last validation) | {final:.2f} |" in card
    for when, value in prune.scores.items():
        assert f"| {when} | {value:.2f} |" in card
    assert "base_model" not in front_matter(card)  # a local folder, not a Hub id
    assert f"- **Base model:** `{tiny_bert}`" in card and "| 2:4 | 2 | 0.5000 |" in card
    assert (tmp_path / "export" / "sparsity.json").is_file()  # still the machine-readable record
    assert prune.state_dict()["scores"] == prune.scores  # a resumed run still knows them


def test_save_pretrained_card_has_the_best_checkpoint_score(tiny_bert: Path, tmp_path: Path) -> None:
    module = SequenceClassificationModule(str(tiny_bert), "stsb", learning_rate=1e-3)
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", monitor="val/score", mode="max")
    save = SavePretrainedCallback(str(tmp_path / "dense"))
    toy_trainer(tmp_path, [checkpoint, save], max_epochs=2).fit(module, text_loader(tiny_bert), text_loader(tiny_bert))
    card = (tmp_path / "dense" / "README.md").read_text()
    # The exported weights are the best checkpoint's: its score, and the epoch it was saved at (in its file name too).
    epoch = torch.load(checkpoint.best_model_path, weights_only=True)["epoch"]
    assert f"epoch={epoch}" in Path(checkpoint.best_model_path).name
    assert f"| exported model (epoch {epoch}, the best checkpoint) | {float(checkpoint.best_model_score):.2f} |" in card
    assert "Dense: no N:M sparsity" in card and front_matter(card)["pipeline_tag"] == "text-classification"


def test_save_pretrained_card_has_the_final_weights_score_and_epoch(tiny_bert: Path, tmp_path: Path) -> None:
    module = SequenceClassificationModule(str(tiny_bert), "stsb", learning_rate=1e-3)
    save = SavePretrainedCallback(str(tmp_path / "dense"), use_best=False)
    trainer = toy_trainer(tmp_path, [save], max_epochs=2)
    trainer.fit(module, text_loader(tiny_bert), text_loader(tiny_bert))
    card = (tmp_path / "dense" / "README.md").read_text()
    assert f"| exported model (epoch 1, its last validation) | {float(trainer.callback_metrics['val/score']):.2f} |" in card
    assert not (tmp_path / "dense" / "sparsity.json").exists()  # dense: no manifest, as before


def test_both_callbacks_export_by_the_same_path(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One exporter: the same weights give the same files (but the N:M manifest and the card's sparsity and cut)."""
    calls = []
    real = callbacks._export.export_pretrained
    monkeypatch.setattr(callbacks._export, "export_pretrained", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    torch.manual_seed(0)
    module = SequenceClassificationModule(str(tiny_bert), "stsb", learning_rate=1e-3)
    save = SavePretrainedCallback(str(tmp_path / "saved"), use_best=False)  # first: before the cut's routing
    prune = HardPruneCallback(backend="masked", export_dir=str(tmp_path / "pruned"))  # pruned at fit start
    toy_trainer(tmp_path, [save, prune], max_epochs=1, enable_checkpointing=False).fit(
        module, text_loader(tiny_bert), text_loader(tiny_bert)
    )
    assert calls == [str(tmp_path / "saved"), str(tmp_path / "pruned")]
    saved, pruned = ({p.name: p.read_bytes() for p in (tmp_path / d).iterdir()} for d in ("saved", "pruned"))
    assert set(pruned) - set(saved) == {"sparsity.json"}
    assert {name for name in saved if saved[name] != pruned[name]} == {"README.md"}
    # Both cards state the exported model's own score, alike.
    rows = [line for line in saved["README.md"].decode().splitlines() if line.startswith("| exported model")]
    assert len(rows) == 1 and rows[0] in pruned["README.md"].decode()


def test_both_callbacks_refuse_a_module_without_a_transformers_model_alike(tmp_path: Path) -> None:
    messages = []
    for exporter in (
        SavePretrainedCallback(str(tmp_path / "a")),
        HardPruneCallback(include=[r"^net\.[02]$"], export_dir=str(tmp_path / "b")),
    ):
        with pytest.raises(TypeError) as raised:
            toy_trainer(tmp_path, [exporter], max_epochs=1).fit(ToyModule(), toy_loader())
        messages.append(str(raised.value).replace(type(exporter).__name__, "CALLBACK"))
    assert messages[0] == messages[1] and "CALLBACK: export_dir needs pl_module.model to be a transformers" in messages[0]
