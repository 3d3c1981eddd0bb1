"""The attacks registry (name -> attack function).

Every attack is called as ``attack(model, x, y, norm, eps, n_iter, **options) -> AttackResult``.
"""

from collections.abc import Callable

from workers.attacks.result import AttackResult
from workers.contract.registry import Registry

Attack = Callable[..., AttackResult]
ATTACKS: Registry[Attack] = Registry("attack")
