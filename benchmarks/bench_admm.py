"""ADMM cost benchmarks (issue 3, "Speed and memory"): step overhead, Z-step time, extra memory.

What is measured, all on CPU with ``torch.set_num_threads(2)``:

1. ``step``: one training step of MiniLM-L6 (batch 32, seq 64, forward + backward + AdamW step) alone, and with the
   work NxMSparsifyCallback adds to it, in the same process, the variants interleaved (the order rotates each round):
   - ``plain``: the step alone;
   - ``gradient``: + ``ADMMState.add_penalty_grad()`` before the optimizer step (``penalty="gradient"``);
   - ``decoupled``: + ``ADMMState.apply_decoupled_pull()`` after it (``penalty="decoupled"``);
   - ``autograd``: ``ADMMState.penalty_value()`` added to the loss, its gradient through autograd (the reference
     implementation's way).
   Reported: median step time per variant, the median over rounds of each round's ratio to ``plain``, and the added
   call timed on its own (median) as a share of the plain step, which is less exposed to the noise of a shared machine.
2. ``zstep``: ``ADMMState.z_step()`` (mask + projection + U update + the residual statistics) on a BERT-base-shaped
   set of 72 weights (12 layers x 4 of 768x768, 3072x768, 768x3072; 85M parameters), with the library's
   ``nxm_mask`` and with a ``torch.topk`` mask swapped in, interleaved; also the two masks alone.
3. ``memory``: peak RSS (``VmHWM`` of ``/proc/self/status``) of fresh subprocesses that each load MiniLM and run ``--mem-steps``
   training steps: without ADMM state, and with it (``gradient`` and ``decoupled``, one Z-step half-way).

Run from the repository root (prints tables, writes ``benchmarks/results/bench_admm.json``)::

    python -m benchmarks.bench_admm                      # everything, a few minutes
    python -m benchmarks.bench_admm --parts zstep --zstep-rounds 7
    python -m benchmarks.bench_admm --parts step --rounds 12 --steps-per-round 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import nxm_lightning.sparsity.admm as admm_module
from benchmarks._results import finish_results, start_results
from nxm_lightning.sparsity.admm import ADMMState
from nxm_lightning.sparsity.nxm import nxm_mask
from nxm_lightning.sparsity.targets import Target, select_targets

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 2
BATCH, SEQ = 32, 64
VARIANTS = ("plain", "gradient", "decoupled", "autograd")


def load_minilm() -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    from nxm_lightning.tasks.hub import DEFAULT_MODEL, resolve_model_name

    return AutoModelForSequenceClassification.from_pretrained(resolve_model_name(DEFAULT_MODEL), num_labels=1)


def make_batch(model: nn.Module, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    return {
        "input_ids": torch.randint(1000, vocab, (batch, seq), generator=generator),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "labels": torch.rand(batch, generator=generator) * 5,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---- 1. training step overhead ---------------------------------------------------------------------------------------


def now() -> tuple[float, float]:
    """(wall clock, CPU time of this process): CPU time leaves out the time other processes held the cores."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


def bench_step(rounds: int, steps_per_round: int, warmup: int) -> dict[str, Any]:
    model = load_minilm()
    model.train()
    batch = make_batch(model, BATCH, SEQ)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    targets = select_targets(model, "2:4")
    states = {
        "gradient": ADMMState(targets, rho=1e-3, penalty="gradient"),
        "decoupled": ADMMState(targets, rho=0.01, penalty="decoupled"),
        "autograd": ADMMState(targets, rho=1e-3, penalty="gradient"),
    }
    for state in states.values():
        state.initialize()
    added: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS[1:]}

    def step(variant: str) -> tuple[float, float]:
        start = now()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        if variant == "autograd":
            t0 = now()
            loss = loss + states["autograd"].penalty_value()
            added["autograd"].append(since(t0))  # the forward part only; its backward is in the step
        loss.backward()
        if variant == "gradient":
            t0 = now()
            states["gradient"].add_penalty_grad()
            added["gradient"].append(since(t0))
        optimizer.step()
        if variant == "decoupled":
            t0 = now()
            states["decoupled"].apply_decoupled_pull()
            added["decoupled"].append(since(t0))
        return since(start)

    for i in range(warmup):
        step(VARIANTS[i % len(VARIANTS)])
    for values in added.values():
        values.clear()
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    per_round: list[dict[str, tuple[float, float]]] = []
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        this_round = {}
        for variant in order:
            samples = [step(variant) for _ in range(steps_per_round)]
            times[variant].extend(samples)
            this_round[variant] = (median([s[0] for s in samples]), median([s[1] for s in samples]))
        per_round.append(this_round)
        line = ", ".join(f"{v} {this_round[v][0]:.3f}s (cpu {this_round[v][1]:.3f}s)" for v in VARIANTS)
        print(f"  round {r + 1}/{rounds}: {line}", flush=True)

    result: dict[str, Any] = {
        "config": {"model": "MiniLM-L6 (all-MiniLM-L6-v2)", "batch": BATCH, "seq": SEQ, "optimizer": "AdamW",
                   "rounds": rounds, "steps_per_round": steps_per_round, "warmup": warmup,
                   "targets": len(targets), "target_weights": sum(t.module.weight.numel() for t in targets)},
        "variants": {},
    }  # fmt: skip
    for clock, k in (("wall", 0), ("cpu", 1)):
        plain = median([s[k] for s in times["plain"]])
        for variant in VARIANTS:
            samples = [s[k] for s in times[variant]]
            entry = {
                "median_s": median(samples),
                "min_s": min(samples),
                "round_ratio_median": median([rnd[variant][k] / rnd["plain"][k] for rnd in per_round]),
                "ratio_of_medians": median(samples) / plain,
                "ratio_of_mins": min(samples) / min(s[k] for s in times["plain"]),
            }
            if variant in added:
                entry["added_call_median_s"] = median([s[k] for s in added[variant]])
                entry["added_call_share_of_plain"] = entry["added_call_median_s"] / plain
            result["variants"].setdefault(variant, {})[clock] = entry
    result["note"] = "autograd's added call covers only building the penalty in the forward; its backward is in the step"
    return result


def print_step(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(f"\nTraining step, {cfg['model']}, batch {cfg['batch']}, seq {cfg['seq']}, {cfg['targets']} targets "
          f"({cfg['target_weights']:,} weights), {cfg['rounds']} rounds x {cfg['steps_per_round']} steps")  # fmt: skip
    for clock in ("wall", "cpu"):
        print(f"[{'wall-clock time' if clock == 'wall' else 'CPU time of the process'}]")
        print(f"{'variant':<10} {'median step':>12} {'ratio: per-round median':>24} {'of medians':>11} {'of mins':>8} "
              f"{'added call':>11} {'share of plain':>15}")  # fmt: skip
        for variant, both in result["variants"].items():
            e = both[clock]
            call = f"{1000 * e['added_call_median_s']:.1f} ms" if "added_call_median_s" in e else "-"
            share = f"{100 * e['added_call_share_of_plain']:.2f}%" if "added_call_share_of_plain" in e else "-"
            print(f"{variant:<10} {e['median_s']:>11.3f}s {e['round_ratio_median']:>24.4f} {e['ratio_of_medians']:>11.4f} "
                  f"{e['ratio_of_mins']:>8.4f} {call:>11} {share:>15}")  # fmt: skip


# ---- 2. Z-step -------------------------------------------------------------------------------------------------------


def topk_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The straightforward mask: ``topk`` of |W| over each group of m, scattered into a boolean mask."""
    groups = weight.detach().reshape(-1, m).abs()
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(weight.shape)


def bert_base_targets(seed: int = 0) -> list[Target]:
    """72 Linear layers shaped like BERT-base's encoder (85M weights), initialised like a trained model's scale."""
    from nxm_lightning.sparsity.nxm import NxMPattern

    torch.manual_seed(seed)
    shapes = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]
    names = ["query", "key", "value", "attention_output", "intermediate", "output"]
    targets = []
    for layer in range(12):
        for name, (out_f, in_f) in zip(names, shapes):
            linear = nn.Linear(in_f, out_f, bias=False)
            nn.init.normal_(linear.weight, std=0.02)
            targets.append(Target(f"layer.{layer}.{name}", linear, NxMPattern(2, 4)))
    return targets


def bench_zstep(rounds: int) -> dict[str, Any]:
    targets = bert_base_targets()
    weights = [t.module.weight.detach() for t in targets]
    state = ADMMState(targets, rho=1e-3)
    state.initialize()
    masks: dict[str, Callable[[torch.Tensor, int, int], torch.Tensor]] = {"nxm_mask": nxm_mask, "topk": topk_mask}

    def zstep(mask_fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> float:
        admm_module.nxm_mask = mask_fn  # what ADMMState.z_step calls
        try:
            start = time.perf_counter()
            state.z_step()
            return time.perf_counter() - start
        finally:
            admm_module.nxm_mask = nxm_mask

    u_core = {name: u.clone() for name, u in state.u.items()}
    z_core: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def core(mask_fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> float:
        """Only what the issue names: Z = Proj(W + U) (mask + projection) and U += W - Z, no residual statistics."""
        start = time.perf_counter()
        for t, w in zip(targets, weights):
            u = u_core[t.name]
            candidate = w + u
            z = candidate * mask_fn(candidate, 2, 4)
            u.add_(w - z)
            z_core[t.name] = z
        return time.perf_counter() - start

    def mask_only(mask_fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> float:
        start = time.perf_counter()
        for w in weights:
            mask_fn(w, 2, 4)
        return time.perf_counter() - start

    for w in weights[:6]:  # both masks agree on continuous weights (no ties)
        assert torch.equal(nxm_mask(w, 2, 4), topk_mask(w, 2, 4))
    kinds = {"zstep": zstep, "core": core, "mask": mask_only}
    for run in kinds.values():  # warm-up: first-touch page faults of the big temporaries
        run(nxm_mask)
        run(topk_mask)
    times: dict[str, list[float]] = {f"{kind}:{name}": [] for kind in kinds for name in masks}
    per_round = []
    for r in range(rounds):
        names = list(masks) if r % 2 == 0 else list(masks)[::-1]
        this_round = {}
        for kind, run in kinds.items():
            for name in names:
                this_round[f"{kind}:{name}"] = run(masks[name])
        for key, value in this_round.items():
            times[key].append(value)
        per_round.append(this_round)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v:.3f}s" for k, v in this_round.items()), flush=True)
    return {
        "config": {"weights": len(targets), "parameters": sum(w.numel() for w in weights), "pattern": "2:4",
                   "rounds": rounds},
        "median_s": {k: median(v) for k, v in times.items()},
        "min_s": {k: min(v) for k, v in times.items()},
        "speedup_round_median": {kind: median([r[f"{kind}:topk"] / r[f"{kind}:nxm_mask"] for r in per_round]) for kind in kinds},
        "speedup_of_min": {kind: min(times[f"{kind}:topk"]) / min(times[f"{kind}:nxm_mask"]) for kind in kinds},
    }  # fmt: skip


def print_zstep(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(f"\nZ-step, BERT-base-shaped: {cfg['weights']} weights, {cfg['parameters']:,} parameters, {cfg['pattern']}, "
          f"{cfg['rounds']} rounds")  # fmt: skip
    print(f"{'':<34} {'nxm_mask':>9} {'topk':>9} {'topk/nxm_mask':>14} {'(of min times)':>15}")
    labels = {"zstep": "ADMMState.z_step (with statistics)", "core": "mask + projection + U update", "mask": "mask only"}
    for kind, label in labels.items():
        med = result["median_s"]
        print(f"{label:<34} {med[kind + ':nxm_mask']:>8.3f}s {med[kind + ':topk']:>8.3f}s "
              f"{result['speedup_round_median'][kind]:>13.2f}x {result['speedup_of_min'][kind]:>14.2f}x")  # fmt: skip


# ---- 3. memory -------------------------------------------------------------------------------------------------------


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB: VmHWM (ru_maxrss on Linux keeps the parent's peak across fork + exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(mode: str, steps: int, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: load MiniLM, ``steps`` training steps, with ADMM state unless mode is ``none``."""
    torch.set_num_threads(threads)
    model = load_minilm()
    model.train()
    batch = make_batch(model, BATCH, SEQ)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    state = None
    if mode != "none":
        state = ADMMState(select_targets(model, "2:4"), rho=1e-3 if mode == "gradient" else 0.01, penalty=mode)  # type: ignore[arg-type]
        state.initialize()
    rss_after_load = peak_rss_kib()
    for i in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        if state is not None and mode == "gradient":
            state.add_penalty_grad()
        optimizer.step()
        if state is not None and mode == "decoupled":
            state.apply_decoupled_pull()
        if state is not None and i == steps // 2:
            state.z_step()
    state_bytes = 0
    if state is not None:
        state_bytes = sum(t.numel() * t.element_size() for store in (state.z, state.u, state.mask) for t in store.values())
    return {"mode": mode, "steps": steps, "peak_rss_kib": peak_rss_kib(),
            "peak_rss_after_setup_kib": rss_after_load, "state_bytes": state_bytes}  # fmt: skip


def bench_memory(steps: int, threads: int) -> dict[str, Any]:
    runs = {}
    for mode in ("none", "gradient", "decoupled"):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_admm", "--memory-child", mode, "--mem-steps", str(steps),
             "--threads", str(threads)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {mode}: peak RSS {runs[mode]['peak_rss_kib'] / 1024:.0f} MiB", flush=True)
    return {"config": {"steps": steps, "batch": BATCH, "seq": SEQ}, "runs": runs}


def print_memory(result: dict[str, Any]) -> None:
    runs = result["runs"]
    base = runs["none"]["peak_rss_kib"]
    print(f"\nPeak RSS, MiniLM, {result['config']['steps']} training steps (batch {BATCH}, seq {SEQ}), one process each")
    print(f"{'ADMM state':<12} {'peak RSS':>10} {'extra':>10} {'Z+U+mask bytes':>15}")
    for mode, run in runs.items():
        extra = (run["peak_rss_kib"] - base) / 1024
        print(f"{mode:<12} {run['peak_rss_kib'] / 1024:>6.0f} MiB {extra:>+6.0f} MiB {run['state_bytes'] / 2**20:>11.1f} MiB")


# ---- main ------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("step", "zstep", "memory"), default=["step", "zstep", "memory"])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds of the step benchmark")
    parser.add_argument("--steps-per-round", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps before the step benchmark")
    parser.add_argument("--zstep-rounds", type=int, default=5, help="interleaved rounds of the Z-step benchmark")
    parser.add_argument("--mem-steps", type=int, default=6, help="training steps in each memory subprocess")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch.set_num_threads (default 2, the machine's cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_admm.json")
    parser.add_argument("--memory-child", choices=("none", "gradient", "decoupled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.mem_steps, args.threads)))
        return

    torch.set_num_threads(args.threads)
    results = start_results("benchmarks.bench_admm")
    if "zstep" in args.parts:
        print("Z-step benchmark ...", flush=True)
        results["zstep"] = bench_zstep(args.zstep_rounds)
    if "step" in args.parts:
        print("Training step benchmark ...", flush=True)
        results["step"] = bench_step(args.rounds, args.steps_per_round, args.warmup)
    if "memory" in args.parts:
        print("Memory benchmark (subprocesses) ...", flush=True)
        results["memory"] = bench_memory(args.mem_steps, args.threads)

    if "step" in results:
        print_step(results["step"])
    if "zstep" in results:
        print_zstep(results["zstep"])
    if "memory" in results:
        print_memory(results["memory"])
    finish_results(results, args.out)


if __name__ == "__main__":
    main()
