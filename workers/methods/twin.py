"""The reduced-precision twin the training attacks differentiate (``TrainSpec.train_precision``).

The inner maximisation (APGD, MSD's steepest steps, TRADES' PGD) is most of an adversarial
training step, and it only needs *directions* from the model: the attacks use the sign, the
normalised gradient or its top-k coordinates, and every attack keeps its own losses and iterates in
float32. So the attacks may differentiate a bfloat16 (or float16) copy of the model in
channels-last layout, where the hardware multiplies that type natively. The update itself -- the
outer forwards, the loss, its backward pass, gradient projection and the optimiser -- stays float32
on the real model.

The twin is a deep copy made once; before each attack it is refreshed from the float32 model by
``copy_`` into its preallocated tensors (a cast, no allocation), and only when a parameter or
buffer changed since the last refresh (torch's per-tensor version counter, read on the host
without a device sync), so RAMP's two attacks of one step pay for one refresh. The twin is always
in eval mode and is refreshed *from* the model, never the other way: its batch-norm statistics
are not updated and never reach the model, and it is not a submodule of anything, so it is never
in a checkpoint or an optimiser.

float16 has a narrow exponent: the input gradient of a small loss may underflow. The twin scales
the gradient flowing back into the float16 graph by ``FP16_GRAD_SCALE`` and divides the input's
gradient (float32) by it again -- the static form of the loss scaling of CUDA's GradScaler, enough
here because the attacks are invariant to the gradient's scale and only zeros would hurt.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from workers.contract import catalog
from workers.evaluation.precision import native_bf16
from workers.models.compiled import eager

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP16_GRAD_SCALE = 2.0**12
_PRECAST = (nn.modules.conv._ConvNd, nn.Linear)


def _check(precision: str) -> None:
    if precision not in catalog.TRAIN_PRECISIONS:
        names = ", ".join(catalog.TRAIN_PRECISIONS)
        raise ValueError(f"unknown train_precision {precision!r}; use one of {names}")


def resolve_train_precision(precision: str, device: torch.device) -> str:
    """"fp32", "bf16" or "fp16" for ``precision`` on ``device``; ValueError for an unknown name."""
    _check(precision)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None  # type: ignore[attr-defined]


class _Reduced(nn.Module):
    """``model`` under ``dtype`` autocast in channels-last layout; float32 logits out."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.device_type = device_type
        self.grad_scale = FP16_GRAD_SCALE if dtype == torch.float16 else 1.0

    def forward(self, x: Tensor) -> Tensor:
        scaled = self.grad_scale != 1.0
        if scaled:
            x = _ScaleGrad.apply(x, 1.0 / self.grad_scale)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=self.dtype):
            logits = self.model(x)
        if scaled:
            logits = _ScaleGrad.apply(logits, self.grad_scale)
        return logits.float()


class AttackTwin:
    """``twin(model)`` -> the module the training attacks differentiate for ``model``.

    ``precision``: a ``catalog.TRAIN_PRECISIONS`` name, resolved on the model's device at first
    use. For float32 the model itself is returned (today's behaviour, bit for bit).
    """

    def __init__(self, precision: str = "fp32") -> None:
        _check(precision)
        self.precision = precision
        self.resolved: str | None = None
        self.refreshes = 0  # how many times the weights were copied (tests, benchmarks)
        self._source: nn.Module | None = None
        self._twin: _Reduced | None = None
        self._pairs: list[tuple[Tensor, Tensor]] = []
        self._versions: list[int] = []

    def __call__(self, model: nn.Module) -> nn.Module:
        if self.resolved is None:
            device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
            self.resolved = resolve_train_precision(self.precision, device)
        if self.resolved == "fp32":
            return model
        if self._source is not model:
            self._build(model)
        self._refresh()
        assert self._twin is not None
        return self._twin

    def _build(self, model: nn.Module) -> None:
        dtype = DTYPES[str(self.resolved)]
        # The twin runs eagerly: compiling a second graph per precision would cost more than it saves.
        base = eager(model)
        inner = copy.deepcopy(base).to(memory_format=torch.channels_last)
        for module in inner.modules():
            if isinstance(module, _PRECAST):
                module.to(dtype)
        for p in inner.parameters():
            p.requires_grad_(False)
            p.grad = None
        inner.eval()
        device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
        self._twin = _Reduced(inner, dtype, device.type).eval()
        src, dst = base.state_dict(keep_vars=True), inner.state_dict(keep_vars=True)
        if src.keys() != dst.keys():
            raise RuntimeError("the model's state changed shape while its attack twin was built")
        self._pairs = [(src[k], dst[k]) for k in src if src[k].is_floating_point()]
        self._versions = [-1] * len(self._pairs)
        self._source = model

    def _refresh(self) -> None:
        versions = [s._version for s, _ in self._pairs]
        if versions == self._versions:
            return
        with torch.no_grad():
            for s, d in self._pairs:
                d.copy_(s)
        self._versions = [s._version for s, _ in self._pairs]
        self.refreshes += 1
