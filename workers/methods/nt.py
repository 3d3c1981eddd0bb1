"""Natural training: cross-entropy on clean inputs."""

from __future__ import annotations

from torch import Tensor, nn

from workers.methods.base import Method, StepOutput, ce_output
from workers.methods.registry import METHODS


@METHODS.register("nt")
class NaturalTraining(Method):
    name = "nt"

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        return ce_output(model, x, y)
