"""RAMP's key trade-off pair chosen before training (``ramp.pair=auto``).

1. Obtain single-norm AT models for l_inf, l_2 and l_1: the spec's ``pair_models`` checkpoints where
   given, else trained here with the run's own budget (the same data, epochs, schedule and -- when
   fine-tuning -- the same starting checkpoint; method ``at-<norm>``), each in
   ``out_dir/pair_selection/at-<norm>`` (a finished one is reused, an interrupted one resumes);
2. evaluate the 3 x 3 cross-norm matrix -- each AT model under each norm's attack -- with the
   default suite on the first ``ramp.pair_n`` test points;
3. choose (q, r) with ``pair_choice.choose_pair``; the report (matrix, choice, sources) is written to
   ``out_dir/pair_selection/pair_selection.json`` and goes into the run's ``metrics.json`` under
   ``pair_selection``; the RAMP run then trains with ``ramp.q`` / ``ramp.r`` set to the choice.

``train`` is injected (``run_training`` locally, Ray Train in a job) so both paths share this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers import checkpoint
from workers.contract import catalog
from workers.contract.layout import PAIR_SELECTION_DIR
from workers.contract.norms import NORMS
from workers.contract.spec import ResolvedSpec, TrainSpec
from workers.training.artifacts import has_metrics, read_pair_report, write_metrics, write_pair_report
from workers.training.pair_choice import choose_pair

log = logging.getLogger(__name__)

PAIR_DIR = PAIR_SELECTION_DIR
Train = Callable[[ResolvedSpec, Path, bool], dict[str, Any]]
"""(spec, out_dir, resume) -> final metrics."""
Evaluate = Callable[[str, ResolvedSpec], dict[str, float]]
"""(checkpoint dir, the RAMP spec) -> robust accuracy per norm on ``ramp.pair_n`` test points."""


def at_spec(spec: ResolvedSpec, norm: str) -> ResolvedSpec:
    """Single-norm AT with the run's own budget (its training attacks' iteration counts kept)."""
    steps = {k: v for k, v in spec.params.items() if k.startswith("attack.")}
    defaults = catalog.param_defaults(f"at-{norm}", spec.dataset, spec.finetune)
    return TrainSpec(
        method=f"at-{norm}", dataset=spec.dataset, model=spec.model, model_args=dict(spec.model_args),
        epochs=spec.epochs, max_steps=spec.max_steps, batch_size=spec.batch_size, lr=spec.lr,
        schedule=spec.schedule, weight_decay=spec.weight_decay, momentum=spec.momentum,
        optimizer=spec.optimizer, seed=spec.seed, epsilons=dict(spec.epsilons), eps_warmup=spec.eps_warmup,
        params={k: v for k, v in steps.items() if k in defaults}, init_from=spec.init_from,
        train_n=spec.train_n, data_root=spec.data_root, eval_n=0, checks_n=0, monitor_n=0,
        precision=spec.precision,
    ).resolve()


def default_evaluate(ckpt_dir: str, spec: ResolvedSpec) -> dict[str, float]:
    from workers.evaluation import evaluate

    model, _ = checkpoint.load(ckpt_dir)
    n = int(spec.params.get("ramp.pair_n", 200))
    metrics = evaluate(model, spec.dataset, spec.epsilons, n=n, seed=spec.seed, precision=spec.precision,
                       data_root=spec.data_root).metrics()
    return {norm: float(metrics[norm]) for norm in NORMS}


def select_pair(spec: ResolvedSpec, out_dir: Path, *, train: Train,
                evaluate: Evaluate = default_evaluate) -> dict[str, Any]:
    """The report of steps 1-3 (cached in ``out_dir/pair_selection``)."""
    folder = Path(out_dir) / PAIR_DIR
    cached = read_pair_report(folder)
    if cached is not None:
        return cached
    models: dict[str, str] = {}
    sources: dict[str, str] = {}
    for norm in NORMS:
        given = spec.pair_models.get(norm)
        if given is not None:
            models[norm], sources[norm] = str(checkpoint.resolve_dir(given)), "given"
            continue
        run_dir = folder / f"at-{norm}"
        ckpt = run_dir / checkpoint.SUBDIR
        if not has_metrics(run_dir):
            log.info("pair selection: training AT-%s with the run's budget", norm)
            train(at_spec(spec, norm), run_dir, checkpoint.has_train_state(ckpt))
        models[norm], sources[norm] = str(ckpt), "trained"
    matrix = {}
    for norm in NORMS:
        log.info("pair selection: evaluating the AT-%s model under every norm", norm)
        matrix[norm] = evaluate(models[norm], spec)
    q, r = choose_pair(matrix)
    report = {"matrix": matrix, "q": q, "r": r, "models": models, "sources": sources,
              "n": int(spec.params.get("ramp.pair_n", 200)), "suite": catalog.DEFAULT_SUITE,
              "rule": "the pair least robust to each other (sum of the two cross entries); q = the one whose "
                      "AT model is the less robust to the other"}
    write_pair_report(folder, report)
    log.info("pair selection: (q, r) = (%s, %s)", q, r)
    return report


def with_pair(spec: ResolvedSpec, report: dict[str, Any]) -> ResolvedSpec:
    """The RAMP spec training with the chosen pair."""
    chosen = {"ramp.q": report["q"], "ramp.r": report["r"]}
    return spec.model_copy(update={"params": dict(spec.params) | chosen})


def prepare(spec: ResolvedSpec, out_dir: Path, *, train: Train,
            evaluate: Evaluate = default_evaluate) -> tuple[ResolvedSpec, dict[str, Any] | None]:
    """(the spec to train, the selection report): the spec itself and None unless ``ramp.pair=auto``."""
    if not spec.pair_auto:
        return spec, None
    report = select_pair(spec, out_dir, train=train, evaluate=evaluate)
    return with_pair(spec, report), report


def record(out_dir: Path, metrics: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    """The run's final metrics with the selection report under ``pair_selection`` (metrics.json too)."""
    if report is None:
        return metrics
    out = dict(metrics) | {"pair_selection": report}
    write_metrics(Path(out_dir), out)
    return out
