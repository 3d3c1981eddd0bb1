"""Robustness evaluation: clean, per-norm and union accuracy, attack suites, common corruptions."""

from workers.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from workers.evaluation.evaluate import evaluate
from workers.evaluation.precision import PRECISIONS, attack_model, resolve_precision
from workers.evaluation.result import METRICS_FILE, PER_SAMPLE_FILE, CorruptionResult, EvalResult
from workers.evaluation.rng import isolated_rng
from workers.evaluation.suites import ATTACKS, SUITES, AttackSettings, Models, Stage, resolve_suite

__all__ = [
    "ATTACKS", "CORRUPTIONS", "METRICS_FILE", "PER_SAMPLE_FILE", "PRECISIONS", "SEVERITIES", "SUITES",
    "AttackSettings", "CorruptionResult", "EvalResult", "Models", "Stage", "attack_model", "corrupt",
    "evaluate", "isolated_rng", "resolve_precision", "resolve_suite",
]
