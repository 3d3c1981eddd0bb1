"""Adversarial attacks in pure PyTorch, batched and free of host synchronisation in their loops.

``ATTACKS`` maps a name to ``attack(model, x, y, norm, eps, n_iter, **options) -> AttackResult``;
importing this package registers "apgd" and "pgd".
"""

from workers.attacks.apgd import apgd, checkpoint_schedule
from workers.attacks.losses import LOSSES
from workers.attacks.pgd import pgd
from workers.attacks.projections import (
    PROJECTIONS,
    project,
    project_box,
    project_l1,
    project_l1_box,
    project_l2,
    project_l2_box,
    project_linf,
    project_linf_box,
)
from workers.attacks.registry import ATTACKS
from workers.attacks.result import AttackResult
from workers.attacks.steepest import DIRECTIONS, steepest_step

__all__ = [
    "ATTACKS",
    "DIRECTIONS",
    "LOSSES",
    "PROJECTIONS",
    "AttackResult",
    "apgd",
    "checkpoint_schedule",
    "pgd",
    "project",
    "project_box",
    "project_l1",
    "project_l1_box",
    "project_l2",
    "project_l2_box",
    "project_linf",
    "project_linf_box",
    "steepest_step",
]
