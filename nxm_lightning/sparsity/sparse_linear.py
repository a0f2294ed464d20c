"""NxMLinear: an N:M pruned ``nn.Linear`` served by a pluggable backend. Pure PyTorch: no Lightning here.

Backends:
- ``masked``: dense weight with exact zeros, any device and dtype: the reference for correctness.
- ``packed``: the kept values plus each one's position inside its group, ``ceil(log2 M)`` bits each (2 bits for 2:4),
  so 2:4 in fp32 takes 0.53x the dense bytes; expanded to dense on the fly for the matmul.
- ``semi_structured``: ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt, else CUTLASS) on CUDA GPUs with
  sparse tensor cores (compute capability 8.x and newer), 2:4 only, fp16/bf16/int8 weights, PyTorch's shape limits.
  The weight is stored in the *compute dtype* (:func:`nxm_lightning.sparsity.precision.compute_dtype` of the trainer's
  precision): under ``bf16-mixed`` an fp32 weight is served in bf16, as autocast would run the dense matmul.
- ``auto``: ``semi_structured`` where :func:`select_backend` finds it usable, else ``masked``.
An unavailable backend falls back to ``masked`` with a warning naming the reason (an error when ``strict``).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nxm_lightning.sparsity.choices import check_choice, choices_of
from nxm_lightning.sparsity.nxm import NxMPattern, first_violation, nxm_mask
from nxm_lightning.sparsity.targets import Target, as_linear

Backend = Literal["auto", "masked", "packed", "semi_structured"]
BACKENDS = choices_of(Backend)
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16, torch.int8)


def check_backend_name(name: str) -> None:
    check_choice("backend", name, Backend)


def semi_structured_unavailable_reason(
    weight: torch.Tensor, pattern: NxMPattern, cuda_capability: tuple[int, int] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> str | None:  # fmt: skip
    """Why ``to_sparse_semi_structured`` cannot serve this weight, or None when it can.

    Args:
        weight: the pruned weight, ``[out, in]``.
        pattern: its N:M pattern.
        cuda_capability: default: the weight's GPU's; tests pass it to exercise the decision without a GPU.
        compute_dtype: the dtype the layer computes in (``bf16`` under ``bf16-mixed``), which the sparse weight is
            stored in; default: the weight's own dtype.
    """
    dtype = compute_dtype or weight.dtype
    if (pattern.n, pattern.m) != (2, 4):
        return f"sparse tensor cores run only 2:4, not {pattern}"
    if not weight.is_cuda and cuda_capability is None:
        return f"the weight is on {weight.device.type}, and sparse tensor cores need a CUDA GPU"
    capability = cuda_capability or torch.cuda.get_device_capability(weight.device)
    if capability < (8, 0):
        return f"GPU compute capability {capability[0]}.{capability[1]} < 8.0 has no sparse tensor cores"
    if dtype not in SEMI_STRUCTURED_DTYPES:
        return (
            f"dtype {dtype} is not one of fp16/bf16/int8 (train with precision bf16-mixed or 16-mixed, whose matmuls "
            "run in bf16/fp16, or cast the model)"
        )
    constraints = _semi_structured_class()._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if constraints is None:
        return f"this PyTorch's semi-structured backend does not take {dtype}"
    rows, cols = weight.shape
    min_rows, min_cols = constraints.sparse_min_rows, constraints.sparse_min_cols
    if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
        return f"shape {rows}x{cols} is not a multiple of the kernel's minimum {min_rows}x{min_cols}"
    return None


def _semi_structured_class() -> type:
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    if torch.backends.cusparselt.is_available():
        return SparseSemiStructuredTensorCUSPARSELT
    return SparseSemiStructuredTensorCUTLASS


def select_backend(
    requested: str, weight: torch.Tensor, pattern: NxMPattern, strict: bool = False,
    cuda_capability: tuple[int, int] | None = None, compute_dtype: torch.dtype | None = None,
) -> str:  # fmt: skip
    """The backend that will serve ``weight``: ``requested`` when usable, else ``masked`` (warning, or error if strict).

    Args:
        requested: one of :data:`BACKENDS`.
        weight / pattern / cuda_capability / compute_dtype: as in :func:`semi_structured_unavailable_reason`.
        strict: an unusable ``semi_structured`` is a RuntimeError instead of a warning and ``masked``.
    """
    check_backend_name(requested)
    if requested in ("masked", "packed"):
        return requested
    reason = semi_structured_unavailable_reason(weight, pattern, cuda_capability, compute_dtype)
    if reason is None:
        return "semi_structured"
    if requested == "auto":
        return "masked"
    message = f"Backend 'semi_structured' unavailable: {reason}."
    if strict:
        raise RuntimeError(message + " Use backend 'auto' or 'masked', or set strict: false to fall back.")
    warnings.warn(message + " Falling back to 'masked'.", stacklevel=2)
    return "masked"


def _index_bits(m: int) -> int:
    """Bits per in-group position, rounded up to a power of two that divides a byte (1, 2, 4 or 8)."""
    if m > 256:
        raise ValueError(f"packed storage supports M <= 256, got M={m}")
    return 1 << math.ceil(math.log2(max(1, math.ceil(math.log2(m)))))


def require_nxm(weight: torch.Tensor, pattern: NxMPattern) -> None:
    """A ValueError naming the first bad group unless ``weight`` ``[out, in]`` is ``pattern``-sparse."""
    violation = first_violation(weight, pattern.n, pattern.m)
    if violation is not None:
        row, col, count = violation
        raise ValueError(
            f"Weight is not {pattern}-sparse (row {row}, input columns {col}..{col + pattern.m - 1} hold {count} "
            "non-zeros); prune it before packing it or building or loading an NxMLinear."
        )


def pack_nxm(weight: torch.Tensor, pattern: NxMPattern) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [out, in*N/M], positions packed into uint8)`` of an N:M weight; raises if it is not N:M."""
    n, m = pattern.n, pattern.m
    require_nxm(weight, pattern)
    mask = nxm_mask(weight, n, m).reshape(-1, m)
    positions = mask.nonzero()[:, 1].reshape(-1, n)  # row-major nonzero: each group's kept positions in order
    values = weight.detach().reshape(-1, m).gather(1, positions).reshape(weight.shape[0], -1)
    bits = _index_bits(m)
    per_byte = 8 // bits
    flat = positions.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, (-flat.numel()) % per_byte)).reshape(-1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.uint8, device=flat.device) * bits
    packed = (flat << shifts).sum(dim=1, dtype=torch.uint8)
    return values.contiguous(), packed


def unpack_nxm(values: torch.Tensor, packed: torch.Tensor, pattern: NxMPattern, in_features: int) -> torch.Tensor:
    """The dense N:M weight ``[out, in_features]`` back from :func:`pack_nxm`'s output."""
    n, m = pattern.n, pattern.m
    bits = _index_bits(m)
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.uint8, device=packed.device) * bits
    positions = ((packed.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[: values.numel()]
    dense = torch.zeros(values.shape[0] * in_features // m, m, dtype=values.dtype, device=values.device)
    dense.scatter_(1, positions.reshape(-1, n).long(), values.reshape(-1, n))
    return dense.reshape(values.shape[0], in_features)


class NxMLinear(nn.Module):
    """A Linear layer whose weight is N:M sparse, computed by one of :data:`BACKENDS`.

    Build it from a pruned ``nn.Linear`` with :meth:`from_linear`; :meth:`dense_weight` gives the weight back with
    exact zeros whatever the backend (for export and verification; ``semi_structured`` holds it in the compute dtype).

    Its state dict is that of the layer it replaced whatever the backend: ``weight`` (dense, exact zeros; ``[in, out]``
    for a GPT-2 ``Conv1D``) and ``bias``. So a routed model still saves with ``save_pretrained`` and loads back with
    ``from_pretrained`` as a plain model, and a checkpoint does not depend on the device that wrote it; loading a state
    dict into an NxMLinear packs the weight for its backend again, and refuses one that is not N:M.
    """

    def __init__(self, in_features: int, out_features: int, pattern: NxMPattern, backend: str, transposed: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.pattern = pattern
        self.backend = backend
        self.transposed = transposed  # it replaced a Conv1D, whose state dict holds the weight as [in, out]

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, pattern: NxMPattern, backend: str = "auto", strict: bool = False,
        compute_dtype: torch.dtype | None = None, transposed: bool = False,
    ) -> NxMLinear:  # fmt: skip
        """Serve a pruned ``linear``.

        Args:
            linear: the pruned layer (its weight must be ``pattern``-sparse).
            pattern: the N:M pattern.
            backend / strict: as in :func:`select_backend`.
            compute_dtype: the dtype the model computes in (:func:`nxm_lightning.sparsity.precision.compute_dtype`);
                ``semi_structured`` stores weight and bias in it, the other backends keep the weight's own dtype.
            transposed: ``linear`` stands for a GPT-2 ``Conv1D`` (:func:`~nxm_lightning.sparsity.targets.as_linear`):
                the state dict keeps that layer's ``[in, out]`` weight.
        """
        weight = linear.weight.detach()
        chosen = select_backend(backend, weight, pattern, strict=strict, compute_dtype=compute_dtype)
        module = cls(linear.in_features, linear.out_features, pattern, chosen, transposed)
        module.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        if chosen == "semi_structured" and compute_dtype is not None:
            weight = weight.to(compute_dtype)
            module.bias = None if module.bias is None else nn.Parameter(module.bias.to(compute_dtype), requires_grad=False)
        module._store(weight)
        return module

    def _store(self, weight: torch.Tensor) -> None:
        """Hold the dense N:M ``weight`` ``[out, in]`` in this layer's backend (a ValueError if it is not N:M)."""
        if self.backend == "packed":
            values, positions = pack_nxm(weight, self.pattern)  # checks the pattern
            self.register_buffer("values", values)
            self.register_buffer("positions", positions)
            return
        # The sparse kernels' conversion would silently drop the surplus non-zeros of a bad group.
        require_nxm(weight, self.pattern)
        if self.backend == "semi_structured":
            self.weight = nn.Parameter(_semi_structured_class().from_dense(weight.contiguous()), requires_grad=False)
        else:
            self.weight = nn.Parameter(weight.clone(), requires_grad=False)

    def dense_weight(self) -> torch.Tensor:
        if self.backend == "packed":
            return unpack_nxm(self.values, self.positions, self.pattern, self.in_features)
        if self.backend == "semi_structured":
            return self.weight.to_dense()
        return self.weight

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        weight = self.dense_weight()
        weight = weight if keep_vars else weight.detach()
        destination[prefix + "weight"] = weight.t().contiguous() if self.transposed else weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool, missing_keys: list[str],
        unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:  # fmt: skip
        names = {"weight", "bias"} if self.bias is not None else {"weight"}
        missing_keys.extend(prefix + name for name in sorted(names) if prefix + name not in state_dict)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k.removeprefix(prefix) not in names)
        if prefix + "weight" not in state_dict:
            return
        loaded = state_dict[prefix + "weight"]
        stored = (self.in_features, self.out_features) if self.transposed else (self.out_features, self.in_features)
        if tuple(loaded.shape) != stored:
            error_msgs.append(
                f"size mismatch for {prefix}weight: copying a param with shape {tuple(loaded.shape)}, the shape in the "
                f"current model is {stored}."
            )
            return
        weight = loaded.t() if self.transposed else loaded
        held = self.values if self.backend == "packed" else self.weight
        try:
            self._store(weight.detach().to(device=held.device, dtype=held.dtype))
        except (ValueError, RuntimeError) as err:
            error_msgs.append(f"While loading {prefix}weight into an NxMLinear ({self.backend}): {err}")
            return
        if self.bias is not None and prefix + "bias" in state_dict:
            with torch.no_grad():
                self.bias.copy_(state_dict[prefix + "bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "semi_structured":
            weight = self.weight
            if x.dtype == weight.dtype or not (x.is_floating_point() and weight.is_floating_point()):
                return F.linear(x, weight, self.bias)  # same dtype, or int8 (the caller quantized its input)
            # An fp32 input (LayerNorm's output even under autocast) for a bf16/fp16 weight: the sparse kernels take
            # only their own dtype. As from nn.Linear, the output is in the autocast dtype under autocast, else in the
            # input's dtype (an fp32 model around bf16 sparse layers keeps working).
            out = F.linear(x.to(weight.dtype), weight, self.bias)
            return out if torch.is_autocast_enabled(x.device.type) else out.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)  # bf16 if it was served semi-structured before
        return F.linear(x, self.dense_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, pattern={self.pattern}, backend={self.backend}"


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` inside ``root``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def route_to_backend(
    root: nn.Module, targets: list[Target], backend: str, strict: bool = False, dtype: torch.dtype | None = None
) -> set[str]:
    """Replace each target of ``root`` (an N:M ``nn.Linear`` or GPT-2 ``Conv1D``) with an :class:`NxMLinear` served by
    ``backend``; layers already routed are left as they are.

    Args:
        root: the module holding the targets (their names are paths inside it).
        targets: the pruned layers, whose weights are N:M.
        backend / strict: as :meth:`NxMLinear.from_linear`.
        dtype: the dtype the model computes in (bf16 under ``bf16-mixed``), which ``semi_structured`` stores its
            weights in; None: the weights' own.

    Returns:
        The backends chosen for the layers routed now.
    """
    chosen = set()
    for t in targets:
        current = root.get_submodule(t.name)
        if isinstance(current, NxMLinear):
            continue
        sparse = NxMLinear.from_linear(as_linear(current), t.pattern, backend, strict, dtype, t.transposed)
        replace_module(root, t.name, sparse)
        chosen.add(sparse.backend)
    return chosen


def reroute_to_backend(root: nn.Module, backend: str, strict: bool = False, dtype: torch.dtype | None = None) -> set[str]:
    """Serve the :class:`NxMLinear` layers of ``root`` with ``backend`` as the device they are on now allows.

    Lightning fits on a GPU but hands the model back on the CPU, where ``auto`` routed the layers to ``masked``; on a GPU
    again (``trainer.validate``, or ``model.cuda()`` before this call) they can be served by sparse tensor cores. A
    ``semi_structured`` layer that left the GPU holds a dense weight (torch's ``.cpu()`` makes it so) and becomes
    ``masked``. Layers whose backend stays the same are left untouched.

    Args:
        root: the model, already on its device.
        backend / strict / dtype: as :func:`route_to_backend`.

    Returns:
        The backends now serving the layers that changed.
    """
    chosen = set()
    for name, layer in list(root.named_modules()):
        if not isinstance(layer, NxMLinear) or isinstance(getattr(layer, "weight", None), _semi_structured_class()):
            continue  # not ours, or already on the sparse kernels (densifying it only to decide would cost memory)
        weight = layer.dense_weight()
        decision = select_backend(backend, weight, layer.pattern, strict, compute_dtype=dtype)
        if decision == layer.backend and decision != "semi_structured":
            continue
        linear = nn.Linear(
            layer.in_features, layer.out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if layer.bias is not None:
                linear.bias.copy_(layer.bias.to(weight.dtype))
        sparse = NxMLinear.from_linear(linear, layer.pattern, backend, strict, dtype, layer.transposed)
        replace_module(root, name, sparse)
        chosen.add(sparse.backend)
    return chosen
