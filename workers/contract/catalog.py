"""What can be named in a spec, and the defaults each name brings. Torch-free.

This is the one table that the CLI, the service's validation and the training code share, so a
job submitted over the API and the same job run with ``rampctl train`` get identical defaults.
The torch registries (``workers.datasets``, ``workers.models``, ``workers.methods``) must register
exactly these names; a test checks that they agree.

Sources of the numbers: the reference settings of the RAMP / E-AT / MSD code (``docs/methods.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.contract.norms import Norm


@dataclass(frozen=True)
class DatasetInfo:
    shape: tuple[int, int, int]  # C, H, W after the dataset's transforms
    num_classes: int | None  # None: read from the data (imagefolder)
    epsilons: dict[Norm, float]
    default_model: str
    batch_size: int
    epochs: int
    lr: float
    schedule: str
    weight_decay: float
    attack_steps: dict[Norm, int]
    ramp_lambda: float
    finetune_lambda: float
    finetune_epochs: int
    finetune_lr: float
    finetune_weight_decay: float
    # The weakest suite whose l_p numbers are results on this data (SUITE_STRENGTH). On mnist-5k,
    # measured: full AutoAttack found l_2 up to 52 points below `standard`, and a sparse search broke
    # nearly every point full AutoAttack left l_1-robust (docs/evaluation.md, "Sparse search").
    # Fashion-MNIST (the same format and radii) is not measured and is warned about alike: the safe side.
    result_suite: str = "standard"


DATASETS: dict[str, DatasetInfo] = {
    # MNIST-style radii of the multi-norm literature (0.3, 2.0, 10).
    "mnist-5k": DatasetInfo(
        shape=(1, 28, 28), num_classes=10, epsilons={"linf": 0.3, "l2": 2.0, "l1": 10.0},
        default_model="small-cnn", batch_size=128, epochs=10, lr=0.05, schedule="piecewise",
        weight_decay=5e-4, attack_steps={"linf": 10, "l2": 10, "l1": 10},
        ramp_lambda=5.0, finetune_lambda=1.5, finetune_epochs=3, finetune_lr=0.05,
        finetune_weight_decay=5e-4, result_suite="strict",
    ),
    "fashion-mnist": DatasetInfo(
        shape=(1, 28, 28), num_classes=10, epsilons={"linf": 0.3, "l2": 2.0, "l1": 10.0},
        default_model="small-cnn", batch_size=128, epochs=10, lr=0.05, schedule="piecewise",
        weight_decay=5e-4, attack_steps={"linf": 10, "l2": 10, "l1": 10},
        ramp_lambda=5.0, finetune_lambda=1.5, finetune_epochs=3, finetune_lr=0.05,
        finetune_weight_decay=5e-4, result_suite="strict",
    ),
    # CIFAR-10: PreAct ResNet-18, 80 epochs, LR 0.05 /10 after 70, lambda 5 (scratch), 1.5 (fine-tune).
    "cifar10": DatasetInfo(
        shape=(3, 32, 32), num_classes=10, epsilons={"linf": 8 / 255, "l2": 0.5, "l1": 12.0},
        default_model="preact-resnet18", batch_size=128, epochs=80, lr=0.05, schedule="piecewise",
        weight_decay=5e-4, attack_steps={"linf": 10, "l2": 10, "l1": 10},
        ramp_lambda=5.0, finetune_lambda=1.5, finetune_epochs=3, finetune_lr=0.05,
        finetune_weight_decay=5e-4,
    ),
    # ImageNet-style folders: radii (4/255, 2, 255); 5 l_inf / 15 l_1 steps; 1-epoch fine-tune, lambda 3.
    "imagefolder": DatasetInfo(
        shape=(3, 224, 224), num_classes=None, epsilons={"linf": 4 / 255, "l2": 2.0, "l1": 255.0},
        default_model="resnet18", batch_size=64, epochs=1, lr=0.005, schedule="multistep",
        weight_decay=1e-4, attack_steps={"linf": 5, "l2": 10, "l1": 15},
        ramp_lambda=3.0, finetune_lambda=3.0, finetune_epochs=1, finetune_lr=0.005,
        finetune_weight_decay=1e-4,
    ),
}

MODELS: tuple[str, ...] = ("small-cnn", "preact-resnet18", "resnet18", "wrn")

METHODS: tuple[str, ...] = (
    "nt", "at-linf", "at-l2", "at-l1", "sat", "avg", "max", "msd", "eat", "ramp", "trades",
    # the defence lecture's methods (docs/methods.md, "The lecture's defences")
    "alp", "mart", "vat", "fgsm-at", "fast-at", "free-at", "distill",
)
# Methods that compute adversarial examples during training (gradient projection applies to them).
ADVERSARIAL_METHODS = frozenset(METHODS) - {"nt", "distill"}
# Of those, the ones whose training attack is the iterative one (APGD / MSD / TRADES' inner loop);
# VAT's power iteration and the one-step methods take no iteration count.
ITERATIVE_METHODS = ADVERSARIAL_METHODS - {"vat", "fgsm-at", "fast-at", "free-at"}
NORM_MODES: tuple[str, ...] = ("linf", "l2", "l1", "max", "sat")
"""What a single-norm defence attacks (``<method>.norm``): one norm, the per-sample worst of the
three (as MAX) or one drawn per batch (as SAT)."""

SCHEDULES: tuple[str, ...] = ("constant", "piecewise", "multistep", "cyclic")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
SUITES: dict[str, str] = {
    "standard": "AutoAttack's APGD-CE + APGD-T with its standard settings (our batched implementation; "
                "the default, what results report; full AutoAttack adds FAB-T and Square: standard+)",
    "standard+": "standard, then pyautoattack's FAB-T and Square on the points it left robust: full "
                 "AutoAttack's composition (slower)",
    "strict": "standard+, then a sparse black-box search on l_1 and l_2 (the corners of the ball inside "
              "the box, where AutoAttack does not converge on MNIST-like data): the strictest number",
    "monitor": "one APGD-CE run per norm from the clean point: cheap, an optimistic upper bound "
               "(per-epoch curves only, never a result)",
    "autoattack": "full AutoAttack, standard version, through pyautoattack (APGD-CE, APGD-T, FAB-T, "
                  "Square): the yardstick",
    "unseen": "the unseen adversaries of Kang et al. 2019 (JPEG l_inf / l_1, fog, snow, Gabor, elastic) "
              "with their union, and the common corruptions; no l_p attacks",
}
"""Evaluation suites: name -> what it runs (shown by the CLI, the API and the docs)."""
DEFAULT_SUITE = "standard"
SUITE_STRENGTH: dict[str, int] = {"monitor": 0, "standard": 1, "standard+": 2, "autoattack": 2, "strict": 3}
"""How much of the threat model each l_p suite searches (a suite finds at least what a weaker one
finds on the same points): what ``DatasetInfo.result_suite`` is compared with."""
UPPER_BOUND_SUITES = frozenset({"monitor"})
UNSEEN_SUITES = frozenset({"unseen"})
"""Suites that run the unseen adversaries and the corruptions instead of l_p attacks."""
"""Suites whose numbers over-state robustness by design: labelled as upper bounds everywhere."""
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
"""Whether a bfloat16 screen may run before the float32 attacks ("auto": where the hardware
multiplies bfloat16 natively; robust verdicts are float32 in every case; see
``workers.evaluation.precision``)."""
TRAIN_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
"""The arithmetic of the training attacks' inner maximisation ("auto": bfloat16 where the hardware
multiplies it natively, else float32); the outer loss, its backward pass and the optimiser stay
float32 (see ``workers.methods.twin``)."""


@dataclass(frozen=True)
class Param:
    """One overridable ``params`` key: its type, default and the methods it applies to."""

    type: type
    default: Any
    methods: frozenset[str] = field(default_factory=lambda: frozenset(METHODS))
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""


_AT = ADVERSARIAL_METHODS
_STEPS = ITERATIVE_METHODS
_RAMP = frozenset({"ramp"})
_NORM_CHOICES = ("linf", "l2", "l1")

_ONE = {m: frozenset({m}) for m in ("alp", "mart", "vat", "fgsm-at", "fast-at", "free-at", "distill")}
# Sources: the papers' own settings (docs/methods.md, "The lecture's defences").
LECTURE_PARAMS: dict[str, Param] = {
    "alp.lambda": Param(float, 0.05, _ONE["alp"], minimum=0.0, maximum=1e4,
                        help="weight of ||z(x_adv) - z(x)||^2 (Kannan et al.'s 0.5 on the per-class mean)"),
    "alp.norm": Param(str, "linf", _ONE["alp"], choices=NORM_MODES, help="attacked norm, or max / sat"),
    "mart.beta": Param(float, 6.0, _ONE["mart"], minimum=0.0, maximum=1e4, help="weight of the KL term"),
    "mart.norm": Param(str, "linf", _ONE["mart"], choices=NORM_MODES, help="attacked norm, or max / sat"),
    "vat.lambda": Param(float, 1.0, _ONE["vat"], minimum=0.0, maximum=1e4, help="weight of the LDS term"),
    "vat.xi": Param(float, 1e-6, _ONE["vat"], minimum=1e-9, maximum=10.0,
                    help="finite-difference scale of the power iteration"),
    "vat.power_iters": Param(int, 1, _ONE["vat"], minimum=1, maximum=100, help="power iterations"),
    "fgsm.alpha": Param(float, 0.5, _ONE["fgsm-at"], minimum=0.0, maximum=1.0,
                        help="weight of the clean CE (1 - alpha on the FGSM example's)"),
    "fgsm.norm": Param(str, "linf", _ONE["fgsm-at"], choices=NORM_MODES, help="attacked norm, or max / sat"),
    "fast.step": Param(float, 1.25, _ONE["fast-at"], minimum=0.01, maximum=10.0,
                       help="FGSM step from the random start, in multiples of eps"),
    "fast.norm": Param(str, "linf", _ONE["fast-at"], choices=NORM_MODES, help="attacked norm, or max / sat"),
    "free.replays": Param(int, 8, _ONE["free-at"], minimum=1, maximum=100, help="m: replays of each batch"),
    "free.norm": Param(str, "linf", _ONE["free-at"], choices=_NORM_CHOICES,
                       help="norm of the persistent perturbation"),
    "distill.temperature": Param(float, 100.0, _ONE["distill"], minimum=1.0, maximum=1e4,
                                 help="softmax temperature T of teacher and student"),
    "distill.teacher_share": Param(float, 0.5, _ONE["distill"], minimum=0.01, maximum=0.99,
                                   help="share of the run's optimiser steps that train the teacher"),
}

# Defaults that depend on the dataset or on fine-tuning are None here and filled by `param_defaults`.
PARAMS: dict[str, Param] = {
    "ramp.lambda": Param(float, None, _RAMP, minimum=0.0, maximum=1e4,
                         help="weight of the logit-pairing loss"),
    "ramp.q": Param(str, "linf", _RAMP, choices=_NORM_CHOICES, help="key trade-off pair: source norm"),
    "ramp.r": Param(str, "l1", _RAMP, choices=_NORM_CHOICES, help="key trade-off pair: target norm"),
    "ramp.pair": Param(str, "fixed", _RAMP, choices=("fixed", "auto"),
                       help="auto: choose (q, r) from single-norm AT models' cross-norm robustness first"),
    "ramp.pair_n": Param(int, 200, _RAMP, minimum=10, maximum=100_000,
                         help="test points of the cross-norm matrix of ramp.pair=auto"),
    "ramp.pairing": Param(str, "kl", _RAMP, choices=("kl", "mse", "cos"), help="pairing loss"),
    "ramp.trades_beta": Param(float, 0.0, _RAMP, minimum=0.0, maximum=1e4,
                              help="> 0: the TRADES form CE(clean) + beta * KL(p_clean || p_max) "
                                   "+ lambda * pairing (reference WRN recipe: 6); 0 = off"),
    "gp.enabled": Param(bool, None, _AT, help="gradient projection (default: on for RAMP from scratch)"),
    "gp.beta": Param(float, 0.5, _AT, minimum=0.0, maximum=1.0, help="GP mixing weight"),
    "gp.formula": Param(str, "reference", _AT, choices=("reference", "projection"),
                        help="reference-code cosine rule, or the paper appendix's true projection"),
    "attack.steps_linf": Param(int, None, _STEPS, minimum=1, maximum=1000, help="APGD iterations, l_inf"),
    "attack.steps_l2": Param(int, None, _STEPS, minimum=1, maximum=1000, help="APGD iterations, l_2"),
    "attack.steps_l1": Param(int, None, _STEPS, minimum=1, maximum=1000, help="APGD iterations, l_1"),
    "attack.l1_sparsity": Param(float, 0.05, _AT - {"vat"}, minimum=1e-4, maximum=1.0,
                                help="initial top-k fraction of l1-APGD in training (one-step methods: the "
                                     "share of coordinates an l1 step moves)"),
    "trades.beta": Param(float, 6.0, frozenset({"trades"}), minimum=0.0, maximum=1e4,
                         help="TRADES KL weight"),
    "trades.steps": Param(int, 10, frozenset({"trades"}), minimum=1, maximum=1000),
    "trades.norm": Param(str, "linf", frozenset({"trades"}), choices=_NORM_CHOICES),
    "msd.steps": Param(int, 50, frozenset({"msd"}), minimum=1, maximum=1000,
                       help="MSD inner iterations (CIFAR-10 reference: 50; MNIST recipe: 100)"),
    **{f"msd.step_{norm}": Param(float, 0.0, frozenset({"msd"}), minimum=0.0, maximum=1e4,
                                 help=f"MSD step length in {norm} (0: the CIFAR-10 reference's step as "
                                      "the same fraction of the radius; MNIST recipe: linf 0.01, l2 0.1, "
                                      "l1 1.0)")
       for norm in ("linf", "l2", "l1")},
    "eat.norms": Param(str, "linf,l1", frozenset({"eat"}), help="comma-separated norms E-AT samples from"),
    **LECTURE_PARAMS,
}


def param_defaults(method: str, dataset: str, finetune: bool) -> dict[str, Any]:
    """The full ``params`` dict a method gets when the spec gives none."""
    info = DATASETS[dataset]
    out: dict[str, Any] = {}
    for key, p in PARAMS.items():
        if method not in p.methods:
            continue
        out[key] = p.default
    if method == "ramp":
        out["ramp.lambda"] = info.finetune_lambda if finetune else info.ramp_lambda
    if "gp.enabled" in out:
        # GP is a from-scratch technique (the reference never fine-tunes with it).
        out["gp.enabled"] = method == "ramp" and not finetune
    for norm in ("linf", "l2", "l1"):
        key = f"attack.steps_{norm}"
        if key in out:
            out[key] = info.attack_steps[norm]
    return out

# Attacks a custom evaluation suite may list: ours ("apgd-ce", "apgd-t" with AutoAttack's standard
# settings; "apgd", the monitor's single run; "pgd"; "sparse", the sparse search of ``strict``) and
# pyautoattack's components ("aa-...").
EVAL_ATTACKS: tuple[str, ...] = (
    "apgd-ce", "apgd-t", "apgd", "pgd", "sparse", "aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square",
)
