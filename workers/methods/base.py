"""The contract between the training loop and a training method.

The loop owns data, optimiser, schedule, checkpoints and reporting; a method owns only "what is
the loss of this batch" plus optional per-epoch hooks (E-AT statistics, gradient projection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from workers.contract.norms import Norm
from workers.methods.twin import AttackTwin


@dataclass(frozen=True)
class MethodContext:
    """Everything a method may read from the resolved spec."""

    epsilons: dict[Norm, float]
    params: dict[str, Any]
    num_classes: int
    finetune: bool = False
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0  # the run's seed: methods derive their own generators from it
    train_precision: str = "fp32"  # the attacks' arithmetic (workers.methods.twin)
    total_steps: int = 0  # the run's optimiser steps (0: unknown); distillation splits them


@dataclass
class StepOutput:
    """The result of one batch.

    ``loss`` is the scalar to back-propagate. ``parts`` holds detached scalar tensors for
    reporting (at least ``ce``; RAMP adds ``pairing``). ``robust_correct`` maps each norm attacked
    in this batch to the detached count of adversarial examples still classified correctly, and
    ``attacked`` to the number of samples attacked with that norm. All values stay on the device:
    the loop syncs once per epoch, not per step.
    """

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    robust_correct: dict[Norm, Tensor] = field(default_factory=dict)
    attacked: dict[Norm, int] = field(default_factory=dict)


class Method:
    """Base class: override ``compute_loss``; the hooks are no-ops unless a method needs them."""

    name: ClassVar[str] = ""

    def __init__(self, ctx: MethodContext) -> None:
        self.ctx = ctx
        self.radius_scale = 1.0
        # What the inner maximisation differentiates: the model itself, or its reduced-precision
        # twin; never part of the method's state (rebuilt from the model when needed).
        self.twin = AttackTwin(ctx.train_precision)

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        raise NotImplementedError

    def set_radius_scale(self, scale: float) -> None:
        """The share of the training radii the next steps attack with (the loop's radius warm-up);
        adversarial methods multiply every ``ctx.epsilons`` value by it."""
        self.radius_scale = float(scale)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called before the first batch of each epoch (GP snapshots the weights here)."""

    def after_step(self, model: nn.Module, x: Tensor, y: Tensor, lr: float) -> None:
        """Called after each optimiser step with the batch and the LR just used."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Called after the last batch of each epoch, before evaluation and checkpointing."""

    def epoch_metrics(self) -> dict[str, float]:
        """Scalars about the epoch that just ended (after ``on_epoch_end``) for its ``EpochReport``;
        gradient projection gives ``grad_cosine`` and ``grad_angle_deg``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Resumable state; tensors and plain Python values only (loaded with weights_only=True)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def ce_output(model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
    """Plain cross-entropy on ``x`` (the building block of NT and single-norm AT)."""
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    return StepOutput(loss=loss, parts={"ce": loss.detach()})
