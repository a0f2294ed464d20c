"""GPU check (issue 30, part 4): what a session with a lent CUDA GPU runs, as one command, within a time budget.

The project's machines have no GPU, so the ``semi_structured`` backend (sparse tensor cores) has never been measured and
the ``cuda``-marked tests never run. A GPU is lent rarely and briefly (one H200, minutes): this script does the three
checks in order, each with its share of the budget, writes one JSON (after each part, so that a run cut short keeps
what it measured) and prints the Markdown tables for ``docs/BENCHMARKS.md``:

1. ``tests``: ``python -m pytest -q -m cuda``.
2. ``kernels``: the ``semi_structured`` backend against dense (``nn.Linear`` holding the same 2:4 weights) in fp16 and
   bf16 at sequence 128 and batch 1, 8, 16, 32 and 64, on MiniLM-L6 shapes (hidden 384, intermediate 1536, 6 layers)
   and BERT-base shapes (768 / 3072, 12 layers): each Linear shape of a block alone, and a randomly initialised encoder
   with all its block Linears routed. Timed with CUDA events, dense and 2:4 interleaved, medians over rounds.
3. ``fit``: ``configs/glue.yaml`` (``backend: auto``) on a few dozen STS-B examples in ``bf16-mixed``, 3 short epochs
   (dense, ADMM, masked), then ``validate`` of its last checkpoint on the GPU: which backend serves the layers, and
   the score against the fit's own last validation. In a child process, so that the budget can stop it.

A part that would not fit in what is left of the budget is skipped with a note; so are the kernel configurations that
come after the budget of their part. Run from the repository root::

    python -m benchmarks.gpu_check run                      # on a CUDA GPU: about 3-4 minutes, at most --budget s
    python -m benchmarks.gpu_check report benchmarks/results/gpu_check.json      # the tables of a recorded run
    python -m benchmarks.gpu_check run --dry-run            # on the CPU: the script's own paths, tiny shapes, masked

Without a CUDA device ``run`` (and ``fit``) refuse in one line with exit status 2 unless ``--dry-run`` is given.
Exit status 1 when a part failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from benchmarks._results import finish_results, start_results
from nxm_lightning.sparsity.nxm import NxMPattern, nxm_project
from nxm_lightning.sparsity.sparse_linear import NxMLinear, _semi_structured_class, route_to_backend
from nxm_lightning.sparsity.targets import select_targets

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FORMAT = "nxm-lightning-gpu-check/1"
PARTS = ("tests", "kernels", "fit")
TESTS_COMMAND = (sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider")
# The device machine reaches no network: fail at once on a missing model or data set, not after the Hub's retries.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Seconds: the least each part needs to say anything, and the most it may take of the budget.
MIN_S = {"tests": 30.0, "kernels": 20.0, "fit": 60.0}
CAP_S = {"tests": 180.0, "kernels": 120.0, "fit": 240.0}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SEQ = 128
P24 = NxMPattern(2, 4)
# The Linear shapes of an encoder block, (in, out) as multiples of (hidden, intermediate): Q/K/V/output, FFN in, out.
LAYERS = {"attention": ("h", "h"), "ffn_in": ("h", "i"), "ffn_out": ("i", "h")}
ITEMS = (*LAYERS, "model")
FIT_EXAMPLES = 64
WARMUP_CALLS = 3
TAIL = 3000  # characters of a failed child's output kept in the record


@dataclass(frozen=True)
class Shapes:
    """An encoder's sizes: enough to build its Linears and a random encoder of that shape (no weights to download)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int


SHAPES = {"MiniLM-L6": Shapes(384, 1536, 6, 12), "BERT-base": Shapes(768, 3072, 12, 12)}
DRY_RUN_SHAPES = {"tiny": Shapes(64, 256, 2, 2)}


class Deadline:
    """The run's budget: seconds left, and how long a part may take so that the parts after it still get theirs."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.start = time.monotonic()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def share(self, part: str, later: list[str]) -> float:
        """Seconds ``part`` may use: its cap, less what the later parts need at the least."""
        return min(CAP_S[part], self.left() - sum(MIN_S[p] for p in later))


def fail(message: str) -> NoReturn:
    """Bad input or no GPU: one line on stderr, exit status 2 (as argparse exits)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block), as the rest of the project's commands."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def require_cuda(dry_run: bool) -> None:
    if not dry_run and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        fail(
            f"no CUDA device (torch.cuda.is_available() is False; torch {torch.__version__} is {build}): run this on "
            "the lent GPU, or add --dry-run to exercise the script on the CPU."
        )


def gpu_facts() -> dict[str, Any]:
    """The GPU and the sparse kernels' library, for the record: the speed of 2:4 depends on both."""
    cusparselt = torch.backends.cusparselt.is_available()
    return {
        "name": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
        "cuda": torch.version.cuda, "cusparselt": torch.backends.cusparselt.version() if cusparselt else None,
        "semi_structured_class": _semi_structured_class().__name__,
    }  # fmt: skip


# ---- 1. the cuda-marked tests ------------------------------------------------------------------------------------


def run_tests(seconds: float, dry_run: bool) -> dict[str, Any]:
    """``pytest -m cuda`` in a child process stopped after ``seconds``; its summary line and failed tests."""
    command = "python " + " ".join(TESTS_COMMAND[1:])
    if dry_run:
        return {"status": "skipped", "command": command, "note": "dry run: the cuda tests skip themselves on the CPU"}
    done, record = run_child(list(TESTS_COMMAND), seconds)
    if done is None:
        return record | {"command": command}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    status = {0: "passed", 5: "no tests"}.get(done.returncode, "failed")
    failed = [line for line in lines if line.startswith("FAILED ")]
    record |= {"status": status, "command": command, "summary": lines[-1].strip("= ") if lines else "", "failed": failed}
    if status == "failed":
        record["output_tail"] = (done.stdout + done.stderr)[-TAIL:]
    return record


def run_child(command: list[str], seconds: float) -> tuple[subprocess.CompletedProcess | None, dict[str, Any]]:
    """``command`` from the repository root, offline, stopped after ``seconds``: its result and its time, or None and
    the record of a timeout with the end of what it had printed (where it hung)."""
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, env=os.environ | OFFLINE, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as err:  # its output is bytes whatever text= says
        output = (err.stdout or b"") + (err.stderr or b"")
        return None, {"status": "timeout", "seconds": seconds, "note": f"stopped after {seconds:.0f} s",
                      "output_tail": output.decode(errors="replace")[-TAIL:]}  # fmt: skip
    return done, {"seconds": time.monotonic() - start}


# ---- 2. semi_structured against dense ----------------------------------------------------------------------------


def timed_ms(call: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls: CUDA events on a GPU (the kernels' time, not Python's
    launch loop alone), the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    begin = time.perf_counter()
    for _ in range(calls):
        call()
    return 1000 * (time.perf_counter() - begin) / calls


def pruned_linear(in_features: int, out_features: int, dtype: torch.dtype, device: torch.device) -> nn.Linear:
    linear = nn.Linear(in_features, out_features, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(nxm_project(linear.weight, 2, 4))
    return linear


def pruned_encoder(shapes: Shapes, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A randomly initialised BERT encoder of these shapes, its block Linears cut to 2:4 (speed needs no trained weights)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=shapes.hidden, intermediate_size=shapes.intermediate,
                        num_hidden_layers=shapes.layers, num_attention_heads=shapes.heads)  # fmt: skip
    model = BertModel(config, add_pooling_layer=False).to(device, dtype).eval()
    with torch.no_grad():
        for target in select_targets(model, P24):
            target.weight.copy_(nxm_project(target.weight, 2, 4))
    return model


def kernel_pairs(shapes: Shapes, dtype: torch.dtype, device: torch.device, backend: str) -> dict[str, tuple[nn.Module, ...]]:
    """``{item: (dense, 2:4)}`` for each block Linear shape and the whole encoder; ``backend`` strict, so that a
    fallback to ``masked`` is an error here, not a slow row in the table."""
    sizes = {"h": shapes.hidden, "i": shapes.intermediate}
    pairs: dict[str, tuple[nn.Module, ...]] = {}
    for item, (n_in, n_out) in LAYERS.items():
        dense = pruned_linear(sizes[n_in], sizes[n_out], dtype, device)
        pairs[item] = (dense, NxMLinear.from_linear(dense, P24, backend, strict=True))
    dense = pruned_encoder(shapes, dtype, device)
    sparse = copy.deepcopy(dense)
    route_to_backend(sparse, select_targets(sparse, P24), backend, strict=True)
    pairs["model"] = (dense, sparse)
    return pairs


def measure(pairs: dict[str, tuple[nn.Module, ...]], shapes: Shapes, batch: int, seq: int, rounds: int,
            calls: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:  # fmt: skip
    """Median ms of dense and 2:4 per item, interleaved (the order alternating each round), and their largest output
    difference (a wrong kernel would be fast for nothing)."""
    sizes = {"h": shapes.hidden, "i": shapes.intermediate}
    generator = torch.Generator(device=device).manual_seed(batch)
    ids = torch.randint(1000, 30000, (batch, seq), device=device, generator=generator)
    mask = torch.ones_like(ids)
    inputs = {item: torch.randn(batch, seq, sizes[n_in], device=device, dtype=dtype, generator=generator)
              for item, (n_in, _) in LAYERS.items()}  # fmt: skip
    row: dict[str, Any] = {"batch": batch, "dense_ms": {}, "sparse_ms": {}, "max_abs_diff": {}}
    with torch.no_grad():
        for item, (dense, sparse) in pairs.items():
            if item == "model":
                calls_of = [lambda m=m: m(input_ids=ids, attention_mask=mask).last_hidden_state for m in (dense, sparse)]
            else:
                calls_of = [lambda m=m, x=inputs[item]: m(x) for m in (dense, sparse)]
            row["max_abs_diff"][item] = float((calls_of[1]().float() - calls_of[0]().float()).abs().max())
            for call in calls_of:
                timed_ms(call, WARMUP_CALLS, device)
            samples: tuple[list[float], list[float]] = ([], [])
            for r in range(rounds):
                for k in (0, 1) if r % 2 == 0 else (1, 0):
                    samples[k].append(timed_ms(calls_of[k], calls, device))
            row["dense_ms"][item], row["sparse_ms"][item] = (statistics.median(s) for s in samples)
    return row


def run_kernels(seconds: float, dry_run: bool, batches: list[int], rounds: int, calls: int) -> dict[str, Any]:
    """Every (shapes, dtype, batch) configuration that fits in ``seconds``; the rest listed as skipped."""
    stop = time.monotonic() + seconds
    device = torch.device("cpu" if dry_run else "cuda")
    backend = "masked" if dry_run else "semi_structured"
    all_shapes = DRY_RUN_SHAPES if dry_run else SHAPES
    result: dict[str, Any] = {"status": "done", "backend": backend, "seq": SEQ if not dry_run else 16, "rounds": rounds,
                              "calls_per_round": calls, "timer": "CUDA events" if device.type == "cuda" else "wall clock",
                              "shapes": {n: vars(s) for n, s in all_shapes.items()}, "rows": [], "skipped": []}  # fmt: skip
    start = time.monotonic()
    for name, shapes in all_shapes.items():
        for dtype_name, dtype in DTYPES.items():
            pairs = kernel_pairs(shapes, dtype, device, backend) if time.monotonic() < stop else {}
            for batch in batches:
                if not pairs or time.monotonic() >= stop:
                    result["skipped"].append(f"{name} {dtype_name} batch {batch}")
                    continue
                row = measure(pairs, shapes, batch, result["seq"], rounds, calls, device, dtype)
                result["rows"].append({"shapes": name, "dtype": dtype_name, **row})
                model = row["dense_ms"]["model"] / row["sparse_ms"]["model"]
                print(f"  kernels: {name} {dtype_name} batch {batch}: encoder 2:4 speedup {model:.2f}x", flush=True)
            del pairs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result["seconds"] = time.monotonic() - start
    if result["skipped"]:
        result["status"] = "partial"
        result["note"] = f"budget: {len(result['skipped'])} configurations not measured"
    return result


# ---- 3. a short fit with backend auto, validated on the GPU ------------------------------------------------------


def find_glue() -> Path | None:
    """The first GLUE folder holding STS-B among ``GLUE_DIR`` and the project's shared data (beside the checkout, or
    the ``shared/`` a device machine's copy of it may hold)."""
    candidates = [os.environ.get("GLUE_DIR"), ROOT.parent / "shared" / "data" / "glue", ROOT / "shared" / "data" / "glue"]
    stsb = [Path(c) / "STS-B" for c in candidates if c]
    return next((s.parent for s in stsb if (s / "train.tsv").is_file() and (s / "dev.tsv").is_file()), None)


def write_synthetic_stsb(root: Path, rows: int) -> Path:
    """STS-B files of made-up pairs, for a machine without the GLUE data: the fit exercises the path, its score means
    nothing."""
    lines = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
    for i in range(rows):
        pair = [f"A person number {i} walks {'far ' * (i % 4)}home.", f"Someone {i % 7} goes home."]
        lines.append("\t".join([str(i), "main", "synthetic", "2026", str(i), "none", "none", *pair, f"{i % 6}.0"]))
    (root / "STS-B").mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        (root / "STS-B" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def backends_of(module: nn.Module) -> dict[str, int]:
    return dict(Counter(m.backend for m in module.modules() if isinstance(m, NxMLinear)))


def fit_check(workdir: Path, model: str, data_dir: str | None, dry_run: bool) -> dict[str, Any]:
    """Fit ``configs/glue.yaml`` for 3 short epochs (dense, ADMM with a Z-step per step, masked) in ``bf16-mixed``, then
    validate its last checkpoint; the layers' backends after each, and both scores."""
    import yaml

    import cli

    glue = Path(data_dir) if data_dir else find_glue()  # a --data-dir given is used as given (or its error shown)
    data = str(glue) if glue else str(write_synthetic_stsb(workdir / "glue", FIT_EXAMPLES))
    config = yaml.safe_load((cli.CONFIG_DIR / "glue.yaml").read_text())
    sparsify, prune = config["trainer"]["callbacks"]
    sparsify["init_args"].update(update_every=1, start_epoch=1, end_epoch=2)
    config["model"]["init_args"]["teacher_snapshot_epoch"] = 1
    prune["init_args"]["export_dir"] = str(workdir / "export")
    (workdir / "glue.yaml").write_text(yaml.safe_dump(config))
    accelerator = "cpu" if dry_run else "gpu"
    args = [
        "--config", str(workdir / "glue.yaml"), f"--model.init_args.model_name_or_path={model}", f"--data.data_dir={data}",
        f"--data.max_train_samples={FIT_EXAMPLES}", f"--data.max_eval_samples={FIT_EXAMPLES}", "--data.batch_size=16",
        f"--trainer.logger.init_args.save_dir={workdir / 'runs'}", "--trainer.enable_progress_bar=false",
        f"--trainer.accelerator={accelerator}", "--trainer.precision=bf16-mixed", "--trainer.max_epochs=3",
        "--trainer.log_every_n_steps=1",
    ]  # fmt: skip
    start = time.monotonic()
    fitted = cli.main(["fit", *args])
    fit_s = time.monotonic() - start
    after_fit = backends_of(fitted.model)
    start = time.monotonic()
    validated = cli.main(["validate", *args, f"--ckpt_path={fitted.trainer.checkpoint_callback.last_model_path}"])
    validate_s = time.monotonic() - start
    after_validate = backends_of(validated.model)
    expected = "masked" if dry_run else "semi_structured"
    passed = bool(after_validate) and set(after_validate) == {expected}
    return {
        "status": "passed" if passed else "failed", "model": model, "data": data if glue else "synthetic STS-B rows",
        "examples": FIT_EXAMPLES, "accelerator": accelerator, "precision": "bf16-mixed", "fit_s": fit_s,
        "validate_s": validate_s, "fit_score": float(fitted.trainer.callback_metrics["val/score"]),
        "validate_score": float(validated.trainer.callback_metrics["val/score"]), "backends_after_fit": after_fit,
        "backends_after_validate": after_validate,
        **({} if passed else {"note": f"validate served the layers by {after_validate or 'no NxMLinear'}, not {expected}"}),
    }  # fmt: skip


def run_fit(seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`fit_check` in a child process (``gpu_check fit``), stopped after ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_fit-") as tmp:
        out = Path(tmp) / "fit.json"
        command = [sys.executable, "-m", "benchmarks.gpu_check", "fit", "--out", str(out), "--workdir", tmp,
                   "--model", args.model] + (["--data-dir", args.data_dir] if args.data_dir else []) + (
                   ["--dry-run"] if args.dry_run else [])  # fmt: skip
        done, record = run_child(command, seconds)
        if done is None:
            return record
        if done.returncode != 0 or not out.is_file():
            return record | {"status": "failed", "note": f"exit status {done.returncode}",
                             "output_tail": (done.stdout + done.stderr)[-TAIL:]}  # fmt: skip
        return json.loads(out.read_text()) | record


# ---- the run and its report --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    require_cuda(args.dry_run)
    deadline = Deadline(args.budget)
    results = start_results("benchmarks.gpu_check")
    gpu = {"name": None} if args.dry_run else gpu_facts()  # a dry run measures the CPU, even beside a GPU
    results.update(format=FORMAT, gpu=gpu, budget_s=args.budget, dry_run=args.dry_run, parts={})
    selected = [p for p in PARTS if p in args.parts]
    for index, part in enumerate(selected):
        seconds = deadline.share(part, selected[index + 1 :])
        print(f"{part}: up to {seconds:.0f} s of the {deadline.left():.0f} s left", flush=True)
        try:
            if seconds < MIN_S[part]:
                outcome = {"status": "skipped", "note": f"budget: {deadline.left():.0f} s left, it needs {MIN_S[part]:.0f} s"}
            elif part == "tests":
                outcome = run_tests(seconds, args.dry_run)
            elif part == "kernels":
                outcome = run_kernels(seconds, args.dry_run, args.batches, args.rounds, args.calls)
            else:
                outcome = run_fit(seconds, args)
        except Exception as err:  # e.g. the sparse kernels refuse this GPU: recorded, and the next part still runs
            outcome = {"status": "failed", "note": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                       "output_tail": traceback.format_exc()[-TAIL:]}  # fmt: skip
        results["parts"][part] = outcome
        print(f"{part}: {outcome['status']}" + (f" ({outcome['note']})" if "note" in outcome else ""), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    results["seconds"] = args.budget - deadline.left()
    finish_results(results, args.out)
    print("\n" + report(results))
    return 1 if any(p["status"] in ("failed", "timeout") for p in results["parts"].values()) else 0


def fmt_ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 1 else f"{value:.2f} ms"


def report(results: dict[str, Any]) -> str:
    """The Markdown for ``docs/BENCHMARKS.md``: the machine, a line per part, the kernel table and the fit's facts."""
    gpu = results.get("gpu", {})
    machine = (
        f"{gpu['name']} (compute capability {'.'.join(map(str, gpu['capability']))}), CUDA {gpu['cuda']}, cuSPARSELt "
        f"{gpu['cusparselt'] or 'not available'} ({gpu['semi_structured_class']})"
        if gpu.get("name") else "no GPU (dry run on the CPU)"
    )  # fmt: skip
    lines = [
        f"Machine: {machine}; torch {results['machine']['torch']}. Date: {results['date']}. Command: "
        f"`{results['command'].strip()}` ({results.get('seconds', 0):.0f} s of a {results['budget_s']:.0f} s budget).",
        "",
        "| part | status | time | note |",
        "|---|---|---:|---|",
    ]
    for name, part in results["parts"].items():
        status = part["status"] + (f": {part['summary']}" if part.get("summary") else "")
        seconds = f"{part['seconds']:.0f} s" if "seconds" in part else ""
        note = "; ".join([part.get("note", ""), *part.get("failed", [])]).strip("; ")
        lines.append(f"| {name} | {status} | {seconds} | {note} |")
    kernels = results["parts"].get("kernels", {})
    if kernels.get("rows"):
        lines += [
            "",
            f"`{kernels['backend']}` against dense (`nn.Linear`, the same 2:4 weights), sequence {kernels['seq']}, "
            f"{kernels['timer']}, median of {kernels['rounds']} interleaved rounds of {kernels['calls_per_round']} "
            "calls. Encoder: a random BERT encoder of those shapes with every block Linear 2:4; the layer columns: "
            "one Linear of that shape (in -> out). Speedup = dense time / 2:4 time (above 1: 2:4 is faster).",
            "",
            "| shapes | dtype | batch | encoder dense | encoder 2:4 | encoder speedup | attention h->h | FFN h->4h | "
            "FFN 4h->h | max abs diff (encoder) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in kernels["rows"]:
            dense, sparse = row["dense_ms"], row["sparse_ms"]
            layers = " | ".join(f"{dense[item] / sparse[item]:.2f}x" for item in LAYERS)
            shapes = kernels["shapes"][row["shapes"]]
            lines.append(
                f"| {row['shapes']} ({shapes['hidden']}/{shapes['intermediate']}) | {row['dtype']} | {row['batch']} | "
                f"{fmt_ms(dense['model'])} | {fmt_ms(sparse['model'])} | **{dense['model'] / sparse['model']:.2f}x** | "
                f"{layers} | {row['max_abs_diff']['model']:.1e} |"
            )
        if kernels.get("skipped"):
            lines += ["", f"Not measured (budget): {', '.join(kernels['skipped'])}."]
    fit = results["parts"].get("fit", {})
    if "fit_score" in fit:
        lines += [
            "",
            f"Short fit: `configs/glue.yaml` (`backend: auto`), {fit['model']}, {fit['examples']} examples of "
            f"{fit['data']}, 3 epochs (dense, ADMM, masked), {fit['precision']} on {fit['accelerator']}; then `validate` "
            "of its last checkpoint:",
            "",
            "| step | time | val/score | layers served by |",
            "|---|---:|---:|---|",
            f"| fit | {fit['fit_s']:.0f} s | {fit['fit_score']:.2f} | {backend_counts(fit['backends_after_fit'])} |",
            f"| validate | {fit['validate_s']:.0f} s | {fit['validate_score']:.2f} | "
            f"{backend_counts(fit['backends_after_validate'])} |",
        ]
    return "\n".join(lines)


def backend_counts(backends: dict[str, int]) -> str:
    return ", ".join(f"{name} ({count})" for name, count in backends.items()) or "none"


def read_record(path: Path) -> dict[str, Any]:
    """A recorded run, or a one-line refusal: no such file, not JSON, or not a record of this script."""
    try:
        results = json.loads(path.read_text())
    except OSError as err:
        fail(f"cannot read {path}: {err.strerror}.")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        fail(f"{path} is not JSON ({err}).")
    if not isinstance(results, dict) or results.get("format") != FORMAT:
        fail(f'{path} is not a record of benchmarks.gpu_check (no "format": "{FORMAT}"); give the JSON a run wrote.')
    return results


def positive(cast: type) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)``, refused unless above zero (a budget, a count of rounds or calls, a batch)."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {cast.__name__}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run the checks and write the JSON (needs a CUDA GPU, or --dry-run)")
    runner.add_argument("--budget", type=positive(float), default=420.0, help="seconds for the whole run (default 420)")
    runner.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    runner.add_argument("--batches", nargs="+", type=positive(int), default=[1, 8, 16, 32, 64])
    runner.add_argument("--rounds", type=positive(int), default=7, help="interleaved rounds per kernel measurement (default 7)")
    runner.add_argument("--calls", type=positive(int), default=20, help="calls timed together in a round (default 20)")
    runner.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    fitter = commands.add_parser("fit", help="the fit part alone, as run calls it in a child process")
    fitter.add_argument("--out", type=Path, required=True)
    fitter.add_argument("--workdir", type=Path, required=True, help="where the config, the runs and the export go")
    for sub in (runner, fitter):
        sub.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="the model the fit starts from")
        sub.add_argument("--data-dir", help="GLUE folder (default: GLUE_DIR, ../shared/data/glue; else made-up STS-B rows)")
        sub.add_argument("--dry-run", action="store_true", help="on the CPU: tiny shapes, masked instead of semi_structured")
    reporter = commands.add_parser("report", help="print the Markdown tables of a recorded run")
    reporter.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(read_record(args.json)))
        return 0
    if args.command == "fit":
        require_cuda(args.dry_run)
        args.workdir.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(fit_check(args.workdir, args.model, args.data_dir, args.dry_run), indent=2))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
