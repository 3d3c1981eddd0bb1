"""Shared pieces of the adversarial methods: the injectable attack, params, norm sampling.

The attack is a constructor argument (default: ``workers.attacks.apgd``, the training form of
APGD) so tests can inject attacks with known outputs and check exactly what a method does with
them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.contract import catalog
from workers.contract.norms import NORMS, Norm
from workers.methods.base import Method, MethodContext, StepOutput

# (model, x, y, norm, eps, n_iter, *, l1_sparsity) -> AttackResult(x_adv, loss)
AttackFn = Callable[..., Any]

# Training attack iterations when neither the params nor the catalog give one
# (docs/methods.md#the-training-attack-apgd-training-form).
DEFAULT_TRAIN_STEPS = 10


def default_attack() -> AttackFn:
    from workers.attacks import apgd  # deferred: importing a method must not need the attacks

    return apgd


def param(ctx: MethodContext, key: str) -> Any:
    """``ctx.params[key]``, else the catalog default; an error names the key when neither exists."""
    if key in ctx.params:
        return ctx.params[key]
    spec = catalog.PARAMS.get(key)
    if spec is None or spec.default is None:
        raise KeyError(f"method param {key!r} is not set and has no default; given: {sorted(ctx.params)}")
    return spec.default


def parse_norms(text: str) -> tuple[Norm, ...]:
    """``"linf,l1"`` -> ``("linf", "l1")``, validated, order kept, duplicates rejected."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in NORMS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"expected distinct norms from {', '.join(NORMS)}, got {text!r}")
    return names  # type: ignore[return-value]


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a (Distributed)DataParallel wrapper.

    Attacks and no-grad forwards run on it, so only the training forwards go through DDP: a DDP
    forward may broadcast buffers (a collective every rank must join the same number of times,
    while e.g. E-AT's ranks may attack different norms) and prepares the gradient all-reduce,
    which an attack's input-only ``autograd.grad`` has no use for.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def batched_forward(model: nn.Module, xs: Tensor, *, concat: bool | None = None) -> Tensor:
    """``model`` on each of the K batches in ``xs`` (K, N, ...) -> (K, N, classes), no autograd.

    For eval-mode forwards only (then one concatenated forward equals K separate ones). ``concat``
    defaults to "not on a CPU": on a GPU one large batch uses the device better; on a CPU the K
    separate batches stay in cache and run ~25% faster (measured: small-cnn, batch 128).
    """
    if concat is None:
        concat = xs.device.type != "cpu"
    with torch.no_grad():
        if concat:
            return model(xs.flatten(0, 1)).unflatten(0, xs.shape[:2])
        return torch.stack([model(batch) for batch in xs])


def correct_count(logits: Tensor, y: Tensor) -> Tensor:
    """Detached number of rows whose argmax is the label (stays on the device)."""
    return (logits.detach().argmax(dim=1) == y).sum()


def method_seed(seed: int, salt: str) -> int:
    """A seed derived from the run's seed, so a run's random choices follow its spec seed and
    different consumers (``salt``) get different streams."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class NormSampler:
    """Draws indices with given weights from its own CPU generator (resumable state).

    A CPU generator keeps the draws identical across devices and never syncs with a GPU.
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def draw(self, weights: Sequence[float]) -> int:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.ndim != 1 or not bool((w >= 0).all()) or not float(w.sum()) > 0:
            raise ValueError(f"sampling weights must be >= 0 with a positive sum, got {list(weights)}")
        return int(torch.multinomial(w, 1, generator=self.generator))

    def randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high]."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class AdversarialMethod(Method):
    """A method that runs the training attack; subclasses call ``run_attack``."""

    def __init__(self, ctx: MethodContext, *, attack: AttackFn | None = None) -> None:
        super().__init__(ctx)
        self.attack = attack if attack is not None else default_attack()
        self.l1_sparsity = float(param(ctx, "attack.l1_sparsity"))

    def eps(self, norm: Norm) -> float:
        """The training radius of ``norm`` (scaled during a radius warm-up)."""
        try:
            return float(self.ctx.epsilons[norm]) * self.radius_scale
        except KeyError:
            raise KeyError(f"no epsilon for norm {norm!r}; given: {sorted(self.ctx.epsilons)}") from None

    def steps(self, norm: Norm) -> int:
        key = f"attack.steps_{norm}"
        value = self.ctx.params.get(key)
        return int(value) if value is not None else DEFAULT_TRAIN_STEPS

    def run_attack(self, model: nn.Module, x: Tensor, y: Tensor, norm: Norm) -> Any:
        """The training attack on ``norm``: an ``AttackResult(x_adv, loss)`` (per-sample best loss)."""
        return self.attack(self.twin(unwrap(model)), x, y, norm, self.eps(norm), self.steps(norm),
                           l1_sparsity=self.l1_sparsity)


def adversarial_ce(model: nn.Module, x_adv: Tensor, y: Tensor, norm: Norm) -> StepOutput:
    """Cross-entropy on the adversarial batch of one norm, with that norm's robust count."""
    logits = model(x_adv)
    loss = F.cross_entropy(logits, y)
    return StepOutput(
        loss=loss,
        parts={"ce": loss.detach()},
        robust_correct={norm: correct_count(logits, y)},
        attacked={norm: int(y.shape[0])},
    )
