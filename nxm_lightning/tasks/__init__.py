"""The task layer: GLUE data, the fine-tuning and distillation LightningModules, metrics, model loading. Built on the
sparsity core only through the callbacks; it needs Lightning, transformers, datasets and torchmetrics."""
