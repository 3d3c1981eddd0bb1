"""Per-epoch sums of the method's outputs, kept on the device and synced once per epoch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from workers.contract.norms import NORMS
from workers.methods.base import StepOutput


class EpochStats:
    """Accumulates loss parts (batch means) and training robust accuracy per norm."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.part_sums: dict[str, Tensor] = {}
        self.part_counts: dict[str, int] = {}
        self.correct = torch.zeros(len(NORMS), device=device, dtype=torch.float64)
        self.attacked = [0] * len(NORMS)

    def add(self, out: StepOutput) -> None:
        for name, value in out.parts.items():
            value = value.detach().to(torch.float64)
            self.part_sums[name] = self.part_sums[name] + value if name in self.part_sums else value
            self.part_counts[name] = self.part_counts.get(name, 0) + 1
        for norm, correct in out.robust_correct.items():
            i = NORMS.index(norm)
            self.correct[i] += correct.detach().to(torch.float64)
            self.attacked[i] += int(out.attacked[norm])

    def summary(
        self, reduce_sum: Callable[[Tensor], Tensor] = lambda t: t
    ) -> tuple[dict[str, float], dict[str, float]]:
        """(mean loss parts, robust accuracy per attacked norm), summed over ranks by ``reduce_sum``."""
        names = sorted(self.part_sums)
        parts = [self.part_sums[n].reshape(()) for n in names]
        sums = torch.cat([torch.stack(parts) if parts else self.correct.new_zeros(0), self.correct])
        counts = torch.tensor(
            [self.part_counts[n] for n in names] + self.attacked, dtype=torch.float64, device=self.device
        )
        # The epoch's single host synchronisation.
        sums_list, counts_list = reduce_sum(sums).tolist(), reduce_sum(counts).tolist()
        k = len(names)
        losses = {n: sums_list[i] / counts_list[i] for i, n in enumerate(names)}
        robust = {
            norm: sums_list[k + i] / counts_list[k + i]
            for i, norm in enumerate(NORMS)
            if counts_list[k + i] > 0
        }
        return losses, robust
