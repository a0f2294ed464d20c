"""What every benchmark records about its run (machine, load, command) and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def start_results(module: str) -> dict[str, Any]:
    """The record's header: machine, threads, load average now (the machine is shared), date, command."""
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "loadavg_at_start": os.getloadavg()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python -m {module} " + " ".join(sys.argv[1:]),
    }  # fmt: skip


def finish_results(results: dict[str, Any], out: Path) -> None:
    """Add the closing load average, print it, and write the record to ``out``."""
    machine = results["machine"]
    machine["loadavg_at_end"] = os.getloadavg()
    print(f"threads {machine['threads']}; load average (1, 5, 15 min) at start {machine['loadavg_at_start']}, "
          f"at end {machine['loadavg_at_end']}")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nWrote {out}")
