"""What each distillation loss costs per training step (issue 27): MiniLM-L6 student and teacher, real RTE batches.

Every variant is a ``DistillationModule`` (student and teacher: the pretrained MiniLM-L6 with a 2-label head) trained
step by step on the same batches (batch 32, dynamic padding, length grouping, as ``configs/glue_kd.yaml``), each on its
own copy of the model and AdamW, interleaved in one process (the order rotates every round) and summarised by medians,
because the machine is shared. A step is ``training_step`` (the teacher's forward pass under ``no_grad`` included),
backward, gradient clipping at 1.0 and the AdamW step, in the precision the study trains in on this CPU (``auto``:
bf16-mixed with native bf16, else fp32):

- ``logit_cached``: the study's ``asp_kd`` / ``nxm_kd`` (0.5 task + 0.5 logit KD, teacher logits cached): from the
  second epoch on no teacher pass at all (its cache is filled before timing);
- ``logit``: the same without the cache: a teacher forward pass every step;
- ``feature_last``: the INC recipe (the last hidden state's MSE alone);
- ``feature_all``: SquareHead (task loss + every layer's normalised hidden-state MSE).

Run from the repository root (``--glue-dir``, default ``$GLUE_DIR`` or ``../shared/data/glue``); prints the table and
writes ``benchmarks/results/bench_distill.json``::

    python -m benchmarks.bench_distill --rounds 5 --steps-per-round 4
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from benchmarks._help import described_parser
from benchmarks._results import finish_results, start_results
from benchmarks.bench_admm import median, now, since
from benchmarks.study.runner import resolve_precision
from nxm_lightning import DistillationModule
from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.hub import DEFAULT_MODEL, resolve_model_name

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, Any]] = {
    "logit_cached": {"alpha": 0.5, "cache_teacher_logits": True},
    "logit": {"alpha": 0.5},
    "feature_last": {"alpha": 0.0, "logit_weight": 0.0, "hidden_weight": 2.0, "hidden_layers": "last"},
    "feature_all": {"alpha": 1.0, "logit_weight": 0.0, "hidden_weight": 1.0, "hidden_loss": "normalized"},
}


class Trainee:
    """One DistillationModule with its AdamW, trained step by step."""

    def __init__(self, loss: dict[str, Any], teacher: str, precision: str) -> None:
        self.module = DistillationModule(DEFAULT_MODEL, task_name="rte", teacher=teacher, **loss).train()
        self.module.log = lambda *args, **kwargs: None  # no Trainer to log to
        self.module.log_dict = lambda *args, **kwargs: None
        self.params = [p for p in self.module.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.01)
        self.plugin = MixedPrecision("bf16-mixed", "cpu") if precision == "bf16-mixed" else Precision()

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        start = now()
        self.optimizer.zero_grad(set_to_none=True)
        with self.plugin.forward_context():
            loss = self.module.training_step(batch, 0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        return since(start)


def bench(glue_dir: Path, rounds: int, steps_per_round: int) -> dict[str, Any]:
    precision = resolve_precision("auto")
    teacher = resolve_model_name(DEFAULT_MODEL)
    data = GLUEDataModule("rte", DEFAULT_MODEL, data_dir=str(glue_dir), batch_size=32, group_by_length=True,
                          length_group_batches=8)  # fmt: skip
    data.setup("fit")
    batches = [
        {k: v for k, v in b.items() if k != "idx"} for b, _ in zip(data.train_dataloader(), range(rounds * steps_per_round))
    ]
    trainees = {name: Trainee(loss, teacher, precision) for name, loss in VARIANTS.items()}
    with torch.no_grad():  # the cache as in the second epoch: every example's teacher logits known
        for batch in batches:
            trainees["logit_cached"].module.teacher_outputs(batch)
    for trainee in trainees.values():  # one untimed step each: first-call allocations
        trainee.step(batches[0])
    times: dict[str, list[float]] = {name: [] for name in trainees}
    cpu: dict[str, list[float]] = {name: [] for name in trainees}
    names = list(trainees)
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            for batch in batches[round_ * steps_per_round : (round_ + 1) * steps_per_round]:
                wall, process = trainees[name].step(batch)
                times[name].append(wall)
                cpu[name].append(process)
    base = median(times["logit_cached"])
    return {
        "precision": precision,
        "batches": len(batches),
        "tokens_per_batch": median([float(b["attention_mask"].sum()) for b in batches]),
        "step_ms": {name: 1000 * median(values) for name, values in times.items()},
        "step_cpu_ms": {name: 1000 * median(values) for name, values in cpu.items()},
        "ratio_to_logit_cached": {name: median(values) / base for name, values in times.items()},
    }


def main() -> None:
    parser = described_parser(__doc__)
    parser.add_argument("--glue-dir", type=Path, default=Path(os.environ.get("GLUE_DIR", "../shared/data/glue")))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_distill.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = start_results("benchmarks.bench_distill")
    results["distill"] = bench(args.glue_dir, args.rounds, args.steps_per_round)
    result = results["distill"]
    print(
        f"precision {result['precision']}, {result['batches']} RTE batches of 32 (median {result['tokens_per_batch']:.0f} tokens)"
    )
    print(f"{'variant':<14} {'ms/step':>9} {'CPU ms':>9} {'x logit_cached':>15}")
    for name in VARIANTS:
        print(f"{name:<14} {result['step_ms'][name]:>9.0f} {result['step_cpu_ms'][name]:>9.0f} "
              f"{result['ratio_to_logit_cached'][name]:>15.2f}")  # fmt: skip
    finish_results(results, args.out)


if __name__ == "__main__":
    main()
