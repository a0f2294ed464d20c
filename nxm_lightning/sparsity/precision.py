"""Which dtypes a Lightning precision flag implies, and which precision to train in on this machine. Pure PyTorch.

``python -m nxm_lightning.sparsity.precision`` prints the recommendation for this machine and why (README, "Which precision to
use where").

- :func:`compute_dtype`: the dtype the matmuls run in (what the ``semi_structured`` backend stores its weights in).
- :func:`has_fast_bf16_cpu`: whether the CPU computes bf16 natively (AVX-512 BF16 or AMX): without it, bf16 autocast
  on the CPU emulates bf16 and runs slower than fp32 (about 5x for a MiniLM training step on an AVX2-only EPYC).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# Lightning's precision flags (``Trainer.precision``) whose matmuls run in a 16-bit dtype.
_COMPUTE_DTYPES = {
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
}
# CPU flags (/proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 (Cooper Lake, Zen 4 and newer), AMX (Sapphire Rapids).
FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype the matmuls run in under a Lightning precision flag, or None for the parameters' own dtype.

    Args:
        precision: ``Trainer.precision``, e.g. ``"bf16-mixed"``, ``"16-true"``, ``"32-true"``.
    """
    return _COMPUTE_DTYPES.get(str(precision))


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is no such file, e.g. macOS).

    Args:
        cpuinfo: the file's text; default: read it.
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


def has_fast_bf16_cpu(flags: set[str] | None = None) -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), so that ``bf16-mixed`` can beat fp32 there.

    ``torch.backends.cpu.get_cpu_capability()`` says only ``AVX2`` / ``AVX512``, not whether bf16 is native, hence the
    flags. Other CPUs (e.g. ARM) report False: measure with ``python -m benchmarks.bench_precision`` before switching.

    Args:
        flags: the CPU flags; default: :func:`cpu_flags` of this machine.
    """
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in FAST_BF16_CPU_FLAGS)


def recommended_precision(cuda_capability: tuple[int, int] | None, fast_bf16_cpu: bool) -> tuple[str, str]:
    """The Lightning precision to train in, and why.

    Args:
        cuda_capability: the GPU's compute capability, or None when training on the CPU.
        fast_bf16_cpu: :func:`has_fast_bf16_cpu` of the CPU (used only without a GPU).
    """
    if cuda_capability is not None:
        gpu = f"GPU compute capability {cuda_capability[0]}.{cuda_capability[1]}"
        if cuda_capability >= (8, 0):
            return "bf16-mixed", f"{gpu} (Ampere or newer) has bf16"
        return "16-mixed", f"{gpu} has no fast bf16: fp16, with a gradient scaler"
    if fast_bf16_cpu:
        return "bf16-mixed", f"the CPU has native bf16 ({' or '.join(FAST_BF16_CPU_FLAGS)})"
    return "32-true", (
        f"the CPU has neither {' nor '.join(FAST_BF16_CPU_FLAGS)}: bf16 is emulated there and slower than fp32 "
        f"(torch CPU capability {torch.backends.cpu.get_cpu_capability()})"
    )


def main() -> int:
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    precision, reason = recommended_precision(capability, has_fast_bf16_cpu())
    print(f"--trainer.precision {precision}   # {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
