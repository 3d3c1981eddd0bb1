"""AutoAttack (the ``pyautoattack`` package) as one of our evaluation attacks.

pyautoattack 0.2.0: ``AutoAttack(model, *, attacks=None, device, eps, norm, seed, version)`` and
``run_standard_evaluation(x, y, /, *, batch_size) -> (x_adv, y_adv)``. For each input it returns the
first adversarial example found, or the input itself when every attack failed, so a sample is
robust exactly when ``model(x_adv)`` still predicts ``y``.

Its "standard" version runs APGD-CE, APGD-T, FAB-T and Square for every norm; what differs per norm
is set by the package: l_inf / l_2 use 1 APGD-CE restart and 9 APGD-T target classes, l_1 uses 5
APGD-CE restarts, 5 target classes and the "large epsilon" schedule (3 eps -> 2 eps -> eps) of
"Mind the box". A custom list of attacks keeps those per-norm settings and only narrows the list.

Every APGD / FAB / Square call reseeds torch's global generators, and its dynamic-defence check
clears ``sys.settrace``; both are undone here (``isolated_rng``, ``preserved_trace``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack
from torch import Tensor, nn

from workers.contract.norms import Norm
from workers.evaluation.rng import isolated_rng, preserved_trace

AA_NORMS: dict[str, str] = {"linf": "Linf", "l2": "L2", "l1": "L1"}
AA_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")  # the "standard" list
# Square's query budget per APGD iteration in the standard version (5000 queries vs 100 iterations);
# kept when ``steps`` scales the iteration counts down.
SQUARE_QUERIES_PER_STEP = 50
_MIN_CLASSES = {"apgd-t": 4, "fab-t": 2}  # targeted DLR reads the 4th-largest logit


def _set_apgd_iterations(attack: APGDAttack, steps: int) -> None:
    # APGD derives its checkpoint schedule and the l_1 large-eps schedule from n_iter at
    # construction time; all of them must follow the new count.
    attack.n_iter = steps
    attack.n_iter_orig = steps
    attack.n_iter_2 = max(int(0.22 * steps), 1)
    attack.n_iter_min = max(int(0.06 * steps), 1)
    attack.size_decr = max(int(0.03 * steps), 1)


def build_adversary(
    model: nn.Module,
    norm: Norm,
    eps: float,
    *,
    seed: int,
    device: torch.device | str,
    num_classes: int,
    attacks: Sequence[str] | None = None,
    steps: int | None = None,
) -> AutoAttack:
    """A configured ``AutoAttack``: the standard version, or only ``attacks`` with its settings."""
    if norm not in AA_NORMS:
        raise ValueError(f"AutoAttack has no norm {norm!r}; supported: {', '.join(AA_NORMS)}")
    chosen = list(AA_ATTACKS if attacks is None else attacks)
    unknown = [a for a in chosen if a not in AA_ATTACKS]
    if unknown or not chosen:
        raise ValueError(f"AutoAttack attacks must be a non-empty subset of {', '.join(AA_ATTACKS)}; "
                         f"got {chosen}")
    for name in chosen:
        need = _MIN_CLASSES.get(name, 2)
        if num_classes < need:
            raise ValueError(f"{name} needs at least {need} classes, the model has {num_classes}")
    if steps is not None and steps < 3:
        raise ValueError(f"AutoAttack needs steps >= 3 (the l_1 schedule splits them in three), got {steps}")

    adversary = AutoAttack(
        model, norm=AA_NORMS[norm], eps=float(eps), version="standard", seed=seed, device=device
    )
    if attacks is not None:
        # Constructing "standard" then narrowing the list keeps the package's own per-norm settings.
        adversary.attacks_to_run = chosen
        adversary.version = "custom"
    adversary.verbose = False
    # Fewer classes than the standard target counts: use every other class as a target.
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, num_classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, num_classes - 1)
    if steps is not None:
        _set_apgd_iterations(adversary.apgd, steps)
        _set_apgd_iterations(adversary.apgd_targeted, steps)
        adversary.fab.n_iter = steps
        adversary.square.n_queries = SQUARE_QUERIES_PER_STEP * steps
    return adversary


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: Norm,
    eps: float,
    *,
    seed: int = 0,
    attacks: Sequence[str] | None = None,
    steps: int | None = None,
    batch_size: int = 256,
) -> Tensor:
    """AutoAttack's adversarial examples for ``(x, y)`` (the input where every attack failed).

    The model must already be in eval mode on ``x``'s device. The caller's RNG states and trace
    function are the same afterwards.
    """
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    with isolated_rng(), preserved_trace():
        adversary = build_adversary(
            model, norm, eps, seed=seed, device=x.device, num_classes=num_classes,
            attacks=attacks, steps=steps,
        )
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach()
