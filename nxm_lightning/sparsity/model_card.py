"""The README.md model card of an export folder, in the Hugging Face convention (YAML front matter, then prose).

``sparsity.json`` stays the machine-readable record; the card is what a person (and the Hub) reads: the base model, the
task and its labels, the N:M pattern and density per kind of layer, the dev score before and after the cut, the
command that made the model and the nxm-lightning version. :func:`render_model_card` is a pure function of its
inputs; :func:`card_facts` gathers them from a model and its LightningModule, whose ``model_card_facts`` tells the
task's facts (the core knows no task: :mod:`nxm_lightning.tasks.card` formats them for GLUE).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

CARD = "README.md"
# The Hub's pipeline tag for each head a transformers architecture name ends with.
PIPELINE_TAGS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForCausalLM": "text-generation",
    "LMHeadModel": "text-generation",
    "ForMaskedLM": "fill-mask",
}
# A Hub model id (owner/name); anything else (a local folder) cannot go into the card's base_model field.
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class CardFacts:
    """What the card says besides the sparsity, which it reads from the ``sparsity.json`` manifest.

    Args:
        architecture: the transformers class, e.g. ``BertForSequenceClassification``.
        base_model: the Hub id or folder the model was fine-tuned from, when known.
        task: e.g. ``GLUE STS-B (stsb)``.
        labels: the label names in id order (``("score",)`` for a regression head).
        score_name: what ``scores`` measure, e.g. ``dev score (points: mean of pearson, spearmanr)``.
        scores: ``{when: value}`` in order, e.g. ``{"before the cut": 85.9, "after the cut": 85.8}``.
        command: the command line that made the model.
        library_version: the nxm-lightning version.
    """

    architecture: str | None = None
    base_model: str | None = None
    task: str | None = None
    labels: tuple[str, ...] = ()
    score_name: str = "dev score"
    scores: dict[str, float] = field(default_factory=dict)
    command: str | None = None
    library_version: str = "unknown"


@runtime_checkable
class DescribesItsTask(Protocol):
    """A module that tells its export's card the facts only the task layer knows (the task layer's modules do:
    :mod:`nxm_lightning.tasks.card`); named here, where :func:`card_facts` reads it, so the core needs no task layer."""

    def model_card_facts(self) -> dict[str, str]:
        """Any of ``base_model``, ``task`` and ``score_name`` (what the card's scores mean)."""
        ...


def library_version() -> str:
    """The installed nxm-lightning version ("unknown" when run from a checkout that was never pip-installed)."""
    try:
        return version("nxm-lightning")
    except PackageNotFoundError:
        return "unknown"


def card_facts(
    model: Any, pl_module: Any = None, scores: dict[str, float] | None = None, command: str | None = None
) -> CardFacts:
    """Gather the card's facts from a transformers ``model`` and (optionally) the LightningModule that trained it.

    Args:
        model: the exported ``PreTrainedModel`` (its config gives the architecture and the labels).
        pl_module: a LightningModule; when it has a ``model_card_facts()`` method (:class:`DescribesItsTask`), the
            ``base_model``, ``task`` and ``score_name`` it returns (a dict, any of them) are the card's. Otherwise
            the base model is the model config's ``name_or_path`` and no task is recorded.
        scores: ``{when: dev score}`` to report.
        command: default: this process's command line (``sys.argv``).
    """
    config = getattr(model, "config", None)
    told = dict(pl_module.model_card_facts()) if isinstance(pl_module, DescribesItsTask) else {}
    base = told.get("base_model") or getattr(config, "name_or_path", None) or None
    id2label = getattr(config, "id2label", None) or {}
    return CardFacts(
        architecture=type(model).__name__,
        base_model=str(base) if base else None,
        task=told.get("task"),
        labels=tuple(str(id2label[i]) for i in sorted(id2label)),
        score_name=told.get("score_name", "dev score"),
        scores=dict(scores or {}),
        command=command if command is not None else shlex.join(["python", *sys.argv]),
        library_version=library_version(),
    )


def pipeline_tag(architecture: str | None) -> str | None:
    """The Hub pipeline tag of a transformers architecture name, or None for a bare encoder or an unknown head."""
    return next((tag for suffix, tag in PIPELINE_TAGS.items() if architecture and architecture.endswith(suffix)), None)


def layer_kinds(manifest: dict[str, Any]) -> list[tuple[str, str, int, float]]:
    """``(kind, pattern, layers, density)`` per kind of layer: the manifest's names with layer indices as ``*``."""
    kinds: dict[tuple[str, str], list[int]] = {}
    for name, entry in manifest["layers"].items():
        kind = re.sub(r"\.\d+(?=\.)", ".*", name.removesuffix(".weight"))
        counts = kinds.setdefault((kind, entry["pattern"]), [0, 0, 0])
        counts[0] += 1
        counts[1] += entry["nonzeros"]
        counts[2] += entry["numel"]
    return [(kind, pattern, n, kept / max(total, 1)) for (kind, pattern), (n, kept, total) in kinds.items()]


def _yaml_str(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: safe for ':' in "2:4" and for any path.
    return json.dumps(value)


def render_model_card(facts: CardFacts, manifest: dict[str, Any] | None = None) -> str:
    """The README.md text: YAML front matter (base_model, library_name, tags, pipeline_tag), then the card's sections.

    Args:
        facts: see :class:`CardFacts`.
        manifest: the ``sparsity.json`` content of an N:M export; None for a dense model.
    """
    patterns = sorted({entry["pattern"] for entry in manifest["layers"].values()}) if manifest else []
    tags = ["nxm-lightning"] + (["sparse", "n:m-sparsity"] + [f"{p}-sparsity" for p in patterns] if patterns else [])
    front = []
    if facts.base_model and _HUB_ID.match(facts.base_model) and not Path(facts.base_model).exists():
        front.append(f"base_model: {_yaml_str(facts.base_model)}")
    front.append('library_name: "transformers"')
    tag = pipeline_tag(facts.architecture)
    if tag:
        front.append(f"pipeline_tag: {_yaml_str(tag)}")
    front.append("tags:")
    front += [f"- {_yaml_str(t)}" for t in tags]

    kind = f"{' + '.join(patterns)} sparse" if patterns else "dense"
    lines = ["---", *front, "---", "", f"# {facts.architecture or 'Model'} ({kind}, nxm-lightning)", ""]
    lines += [
        f"- **Base model:** `{facts.base_model}`" if facts.base_model else "- **Base model:** not recorded",
        f"- **Task:** {facts.task}" if facts.task else "- **Task:** not recorded",
        f"- **Labels:** {', '.join(f'{i}: `{label}`' for i, label in enumerate(facts.labels))}"
        if facts.labels
        else "- **Labels:** not recorded",
        "",
        "## Sparsity",
        "",
    ]
    if manifest:
        lines += [
            "N:M = N weights kept of every M consecutive input features (NVIDIA's order; 2:4 keeps 2 of 4). The zeros "
            "are stored in the weights; `sparsity.json` lists every layer with its verified counts. Layers not listed "
            "(embeddings, norms, the task head) are dense.",
            "",
            "| layers | pattern | count | density |",
            "|---|---|---:|---:|",
        ]
        lines += [f"| `{k}` | {p} | {n} | {d:.4f} |" for k, p, n, d in layer_kinds(manifest)]
        lines += [
            "",
            f"Overall density of the N:M layers: {manifest['overall_density']:.4f}. "
            "Check it: `python -m nxm_lightning.sparsity.verify <this folder>`.",
        ]
    else:
        lines.append("Dense: no N:M sparsity (e.g. the dense fine-tuning that a sparse run starts from or distils from).")
    lines += ["", "## Scores", ""]
    if facts.scores:
        lines += [f"| when | {facts.score_name} |", "|---|---:|"]
        lines += [f"| {when} | {value:.2f} |" for when, value in facts.scores.items()]
    else:
        lines.append("Not measured during the run that made this model.")
    lines += ["", "## How it was made", ""]
    lines += ["```bash", facts.command, "```", ""] if facts.command else ["Command not recorded.", ""]
    lines.append(f"With nxm-lightning {facts.library_version}.")
    return "\n".join(lines) + "\n"


def is_our_model_card(text: str) -> bool:
    """Whether ``text`` is a card that :func:`render_model_card` wrote (its front matter's ``nxm-lightning`` tag and its
    closing version line): how an export folder from before the export marker is told from someone else's folder."""
    lines = text.splitlines()
    return bool(lines) and lines[0] == "---" and '- "nxm-lightning"' in lines and lines[-1].startswith("With nxm-lightning ")


def recorded_fact(text: str, label: str) -> str | None:
    """The value of a card's ``- **label:** value`` line (``Task``, ``Base model``), or None when it has none."""
    found = re.search(rf"^- \*\*{re.escape(label)}:\*\* (.+)$", text, re.MULTILINE)
    return found[1] if found else None


def recorded_scores(text: str) -> dict[str, float]:
    """``{when: dev score}`` from the card's Scores table (empty when none was measured), to print beside a new score."""
    section = text.partition("\n## Scores\n")[2].partition("\n## ")[0]
    return {when: float(value) for when, value in re.findall(r"^\| ([^|]+?) \| (-?\d+\.\d+) \|$", section, re.MULTILINE)}
