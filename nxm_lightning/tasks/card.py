"""The task's facts on an export's model card: what the GLUE modules tell the core's card
(:func:`nxm_lightning.sparsity.model_card.card_facts` calls a LightningModule's ``model_card_facts``) and how the
score command reads the task back from a card."""

from __future__ import annotations

import re

from nxm_lightning.sparsity.model_card import recorded_fact
from nxm_lightning.tasks.glue import GlueTask


def task_facts(task: GlueTask) -> dict[str, str]:
    """The card's ``task`` (``GLUE STS-B (stsb)``) and ``score_name`` (what its GLUE score averages)."""
    return {
        "task": f"GLUE {task.directory} ({task.name})",
        "score_name": f"dev score (points: mean of {', '.join(task.metrics)})",
    }


def recorded_task(text: str) -> str | None:
    """The GLUE task name a card records (``stsb`` from ``GLUE STS-B (stsb)``), or None: how the score command knows
    which dev set to score an export on when it is not told."""
    found = re.fullmatch(r"GLUE \S+ \((\w+)\)", recorded_fact(text, "Task") or "")
    return found[1] if found else None
