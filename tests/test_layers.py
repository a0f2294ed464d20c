"""The package's layers: the sparsity core imports with torch alone; the top-level names load on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Every package the task layer and the callbacks need, and none of which the core may import.
BLOCKED = ("lightning", "transformers", "datasets", "torchmetrics", "safetensors", "tokenizers", "huggingface_hub",
           "onnx", "onnxruntime", "tensorboard", "jsonargparse")  # fmt: skip
BLOCK = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_every_core_module_imports_with_torch_alone() -> None:
    modules = sorted(p.stem for p in (REPO / "nxm_lightning" / "sparsity").glob("*.py") if p.stem != "__init__")
    assert {"nxm", "targets", "admm", "sparse_linear", "export", "verify"} <= set(modules)
    code = "import importlib\n" + "".join(f"importlib.import_module('nxm_lightning.sparsity.{m}')\n" for m in modules)
    result = run_python(code + "print(sorted(k for k in sys.modules if k.split('.')[0] in " + repr(BLOCKED) + "))")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    # The core works there: a 2:4 projection, and GPT-2's Conv1D simply cannot occur.
    result = run_python(
        "import torch\nfrom nxm_lightning.sparsity.nxm import nxm_project, is_nxm\n"
        "from nxm_lightning.sparsity.targets import select_targets\n"
        "model = torch.nn.Sequential(torch.nn.Linear(8, 8))\n"
        "targets = select_targets(model, '2:4', include=['0'])\n"
        "print(len(targets), is_nxm(nxm_project(targets[0].weight, 2, 4), 2, 4))"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["1", "True"]


def test_the_top_level_names_load_the_task_layer_only_when_used() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, nxm_lightning; print('lightning' in sys.modules); "
         "nxm_lightning.SequenceClassificationModule; print('lightning' in sys.modules)"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "True"]
