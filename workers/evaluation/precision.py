"""Which arithmetic the gradient attacks of an evaluation run in.

An evaluation's numbers are about the model in float32; the attacks' forward and backward passes
are most of its cost. Where the hardware multiplies bfloat16 natively (a CUDA device that
supports it; a CPU with AVX512-BF16 or AMX, through oneDNN) the attacks may differentiate a
bfloat16 autocast copy of the model in channels-last layout instead: ~2.5x faster per iteration on
a small CNN on this project's CPU (measured: 111 vs 283 us per image for a forward + input
backward). Every decision stays with the float32 model: the attacks' candidates are re-checked
in float32 after each run and the per-sample flags come from float32 forwards only (see
``workers.attacks.standard``), so reduced precision can only change which points the attack
finds, never count a point that is not misclassified. Agreement with pyautoattack (float32) is
tested (``tests/test_eval_agreement.py``) and benchmarked (``bench/bench_eval.py``).

``precision``: "auto" (bfloat16 where native, else float32), "fp32" or "bf16".
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware (else autocast would only emulate it)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
                  getattr(torch.cpu, "_is_amx_tile_supported", None))
        return torch.backends.mkldnn.is_available() and any(bool(c()) for c in checks if c is not None)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16" for ``precision`` on ``device``; ValueError for an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


class _Autocast(nn.Module):
    """``model`` under bfloat16 autocast in channels-last layout; float32 logits out."""

    def __init__(self, model: nn.Module, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


_PRECAST = (nn.modules.conv._ConvNd, nn.Linear)


def attack_model(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """The module the gradient attacks differentiate: ``model`` itself in float32, else a
    bfloat16 autocast copy (the caller's model is never changed).

    The copy's convolution and linear weights are stored in bfloat16 once: autocast would
    otherwise cast them again on every forward (its cast cache only keeps tensors that require
    grad), ~8 % of an attack's time on a small CNN. Everything else (batch norm statistics, custom
    parameters) stays float32 and is cast by autocast as usual.
    """
    if resolve_precision(precision, device) == "fp32":
        return model
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for module in twin.modules():
        if isinstance(module, _PRECAST):
            module.to(torch.bfloat16)
    twin.eval()
    return _Autocast(twin, device.type).eval()
