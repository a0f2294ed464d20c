"""Tiny randomly initialised transformers of every supported architecture, built offline from their config classes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoModelForSequenceClassification

from nxm_lightning.sparsity.export import export_pretrained
from nxm_lightning.sparsity.nxm import nxm_project
from nxm_lightning.sparsity.targets import select_targets

VOCAB, HIDDEN, LAYERS = 100, 32, 2
COMMON = dict(vocab_size=VOCAB, num_attention_heads=2, max_position_embeddings=64)
BERT_LIKE = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")  # fmt: skip

# name: (tiny config, the layers targeted by default in each block, how many blocks have weights of their own (ALBERT's
# two layers share one block's))
ARCHITECTURES: dict[str, tuple[Callable[[], transformers.PretrainedConfig], tuple[str, ...], int]] = {
    "bert": (lambda: transformers.BertConfig(**COMMON, hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=64),
             BERT_LIKE, LAYERS),
    "roberta": (lambda: transformers.RobertaConfig(**COMMON | {"max_position_embeddings": 66}, hidden_size=HIDDEN,
                                                   num_hidden_layers=LAYERS, intermediate_size=64, pad_token_id=1),
                BERT_LIKE, LAYERS),
    "distilbert": (lambda: transformers.DistilBertConfig(vocab_size=VOCAB, max_position_embeddings=64, n_heads=2, dim=HIDDEN,
                                                         n_layers=LAYERS, hidden_dim=64),
                   ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"),
                   LAYERS),
    "albert": (lambda: transformers.AlbertConfig(**COMMON, embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                                 intermediate_size=64),
               ("attention.query", "attention.key", "attention.value", "attention.dense", "ffn", "ffn_output"), 1),
    "deberta-v2": (lambda: transformers.DebertaV2Config(**COMMON, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                                        intermediate_size=64, relative_attention=True,
                                                        pos_att_type=["p2c", "c2p"], position_buckets=16,
                                                        max_relative_positions=-1, norm_rel_ebd="layer_norm",
                                                        share_att_key=True),
                   ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                    "attention.output.dense", "intermediate.dense", "output.dense"), LAYERS),
    "electra": (lambda: transformers.ElectraConfig(**COMMON, embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                                   intermediate_size=64),
                BERT_LIKE, LAYERS),
    "gpt2": (lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64,
                                             pad_token_id=0, bos_token_id=1, eos_token_id=1),
             ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), LAYERS),
    "llama": (lambda: transformers.LlamaConfig(**COMMON, hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=64,
                                               num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=1),
              ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"), LAYERS),
}  # fmt: skip


def tiny_model(arch: str, **overrides: Any) -> nn.Module:
    """A seeded random ``arch`` model; ``overrides`` set config fields (e.g. ``initializer_range``)."""
    torch.manual_seed(0)
    config = ARCHITECTURES[arch][0]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return AutoModelForSequenceClassification.from_config(config)


def block_layer(name: str) -> str:
    """``bert.encoder.layer.0.attention.self.query`` -> ``attention.self.query`` (the part after the last index)."""
    return re.split(r"\.\d+\.", name)[-1]


def export_pruned(model: nn.Module, export_dir: Path, tokenizer: Any = None, pattern: str = "2:4") -> Path:
    """``model``'s default targets cut to ``pattern`` by magnitude, exported as an nxm-lightning folder."""
    targets = select_targets(model, pattern)
    with torch.no_grad():
        for t in targets:
            t.weight.copy_(nxm_project(t.weight, t.pattern.n, t.pattern.m))
    patterns = {f"{t.name}.weight": t.pattern for t in targets}
    return export_pretrained(model, tokenizer, patterns, export_dir, {f"{t.name}.weight" for t in targets if t.transposed})
