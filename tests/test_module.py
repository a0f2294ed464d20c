"""SequenceClassificationModule options."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import text_loader, toy_trainer

from nxm_lightning import SequenceClassificationModule


def test_frozen_embeddings_stay_as_pretrained_and_leave_the_optimizer(tiny_bert: Path, tmp_path: Path) -> None:
    module = SequenceClassificationModule(str(tiny_bert), "stsb", learning_rate=1e-3, freeze_embeddings=True)
    embeddings = module.model.get_input_embeddings().weight
    before, query_before = (
        embeddings.detach().clone(),
        module.model.bert.encoder.layer[0].attention.self.query.weight.detach().clone(),
    )
    trainer = toy_trainer(tmp_path, [], max_steps=3, enable_checkpointing=False)
    trainer.fit(module, text_loader(tiny_bert))
    assert torch.equal(embeddings, before)
    assert not torch.equal(module.model.bert.encoder.layer[0].attention.self.query.weight, query_before)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert id(embeddings) not in optimized
    assert id(module.model.bert.embeddings.position_embeddings.weight) in optimized  # only the token embeddings
