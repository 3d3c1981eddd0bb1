"""What every attack returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class AttackResult:
    """The outcome of one attack run on a batch; every tensor is detached.

    - ``x_adv``: per sample the best iterate found (highest objective), inside ball and box;
    - ``loss``: the attack's per-sample objective at ``x_adv``;
    - ``robust``: per sample, True when every iterate the attack evaluated (the start included)
      was classified correctly -- "misclassified at any iterate" is ``~robust`` (None from an
      attack that does not track it);
    - ``x_fooled``: where ``robust`` is False, the misclassified iterate with the largest margin
      (wrong-class logit minus true-class logit), else ``x_adv`` (None when not tracked). It is
      the point an evaluation hands on as the adversarial example.
    """

    x_adv: Tensor
    loss: Tensor
    robust: Tensor | None = None
    x_fooled: Tensor | None = None
