"""Defensive distillation (Papernot et al. 2016), the lecture's example of a defence that only
looks robust.

The first ``distill.teacher_share`` of the run's optimiser steps train the teacher:
CE(softmax(z(x) / T), y). Then a frozen copy of it becomes the teacher, the network is
re-initialised (seeded from the run's seed) and trains as the student on the teacher's soft labels
at the same temperature: -sum_k softmax(z_teacher(x) / T)_k * log softmax(z(x) / T)_k. The checkpoint is the
student deployed at T = 1: its raw logits, which training at T has scaled up by about T, so the
softmax saturates and cross-entropy input gradients vanish (the masking the evaluation's checks
must catch; docs/evaluation.md).

A student started from the teacher's weights would not move: its soft-label gradient,
(p_student - p_teacher) / T, is zero there. Deviation: one optimiser and one LR schedule serve the
whole run, so the student starts with the teacher phase's momentum, which decays as 0.9^k over its
first steps, and at the schedule's LR of that point.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.methods.base import Method, MethodContext, StepOutput
from workers.methods.common import method_seed, param, unwrap
from workers.methods.losses import soft_ce
from workers.methods.registry import METHODS


def teacher_steps(share: float, total_steps: int) -> int:
    """The steps of the teacher phase; at least one step each for teacher and student."""
    if total_steps < 2:
        raise ValueError(f"distill needs at least 2 optimiser steps (teacher, then student); the run has "
                         f"{total_steps or 'an unknown number of'} step(s)")
    return min(max(1, round(share * total_steps)), total_steps - 1)


def reinitialise(model: nn.Module, seed: int) -> None:
    """Every layer's own initialisation again, from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


@METHODS.register("distill")
class Distill(Method):
    name = "distill"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.temperature = float(param(ctx, "distill.temperature"))
        self.teacher_steps = teacher_steps(float(param(ctx, "distill.teacher_share")), ctx.total_steps)
        self.step = 0
        self.teacher: nn.Module | None = None
        self._saved: dict[str, Tensor] | None = None

    def _teacher(self, model: nn.Module) -> nn.Module | None:
        """The frozen teacher once its phase is over. On the first student step it is the model as
        the teacher phase left it, and the model starts again as the student; a resumed run
        rebuilds it from the saved weights."""
        if self.teacher is None and self.step >= self.teacher_steps:
            bare = unwrap(model)
            teacher = copy.deepcopy(bare)
            if self._saved is not None:
                teacher.load_state_dict(self._saved)
            else:
                reinitialise(bare, method_seed(self.ctx.seed, "distill-student"))
            self.teacher = teacher.eval().requires_grad_(False)
        return self.teacher

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        teacher = self._teacher(model)
        self.step += 1
        z = model(x)
        if teacher is None:
            loss = F.cross_entropy(z / self.temperature, y)
        else:
            with torch.no_grad():
                soft = F.softmax(teacher(x) / self.temperature, dim=1)
            loss = soft_ce(z, soft, self.temperature)
        return StepOutput(loss=loss, parts={"ce": loss.detach()})

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step}
        if self.teacher is not None:
            state["teacher"] = {k: v.detach().clone() for k, v in self.teacher.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self._saved = state.get("teacher")
