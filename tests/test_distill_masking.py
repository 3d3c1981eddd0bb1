"""Defensive distillation does not fool the evaluation (issue 21, item 4).

A small-cnn trained by defensive distillation at T = 100 on mnist-5k and deployed at T = 1 has
logits about a hundred times too large: its softmax saturates, the cross-entropy's input gradient
is exactly zero on the points it classifies correctly, and a cross-entropy attack (APGD-CE) sees
nothing. The scale-free targeted DLR loss of APGD-T breaks it. The test evaluates it exactly as
an eval job does (``run_evaluation``: the default ``standard`` suite, the default precision scheme,
the free checks; the rigour checks are off, ``checks_n = 0``, to keep the test short) and asserts

1. the default evaluation reports per-norm robust accuracy no higher than pyautoattack's APGD-CE +
   APGD-T (standard settings) on the same points;
2. the checks flag the masking: ``ce_vs_dlr`` (APGD-T fooled most of what APGD-CE left robust) and
   the ``gradients`` sanity check (zero input gradients) fail, each on at least 50 points;
3. the job's warnings (``result_warnings``, what the API returns as a job's ``warnings``) name
   APGD-T, the targeted DLR loss, as the component that broke the model.

The control: the same network, data, optimiser and steps without distillation (``nt``): the
gradient check passes on it and ``ce_vs_dlr`` does not fail.
"""

from __future__ import annotations

import pytest

from workers import checkpoint
from workers.contract.results import result_warnings
from workers.contract.spec import EvalSpec, TrainSpec
from workers.datasets import load_tensors
from workers.evaluation import EvalResult
from workers.evaluation.agreement import autoattack_flags
from workers.training.evaluation import run_evaluation
from workers.training.loop import run_training

# Enough for >= 50 relevant points where it matters (measured at 70: APGD-CE left 54 / 60 / 49 points
# for ce_vs_dlr on l_inf / l_2 / l_1, and >= 50 correct points for the gradient check); 100 cost 40 %
# more for the same verdicts.
N_POINTS = 70
TEMPERATURE = 100.0  # the paper's MNIST value (the issue asks for T >= 50)
# 8 epochs of 2,048 digits, batch 64: 96 teacher and 96 student steps. At T = 100 the logits must
# grow a hundredfold; Adam at LR 1e-3 left the teacher near chance after 48 steps (measured), at
# 1e-2 the student reaches ~87 % clean with zero input gradients on ~90 % of its correct points.
# The control gets the same recipe.
RECIPE = {"train_n": 2048, "epochs": 8, "batch_size": 64, "optimizer": "adam", "lr": 1e-2, "seed": 0,
          "eval_n": 0, "monitor_n": 0, "checks_n": 0}
NORMS = ("linf", "l2", "l1")


def _train(tmp_path_factory, method: str, params: dict) -> str:
    out = tmp_path_factory.mktemp(method)
    run_training(TrainSpec(method=method, params=params, **RECIPE).resolve(), out)
    return str(out / checkpoint.SUBDIR)


def _evaluate(ckpt: str, out) -> tuple[dict, EvalResult]:
    """The eval job's own function on the first N_POINTS test points; free checks only."""
    metrics = run_evaluation(EvalSpec(checkpoint=ckpt, n=N_POINTS, checks_n=0), out)
    return metrics, EvalResult.load(out)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> str:
    return _train(tmp_path_factory, "distill", {"distill.temperature": TEMPERATURE})


@pytest.fixture(scope="module")
def natural(tmp_path_factory) -> str:
    return _train(tmp_path_factory, "nt", {})


@pytest.mark.slow
def test_distillation_is_caught_and_not_over_stated(distilled, tmp_path) -> None:
    metrics, result = _evaluate(distilled, tmp_path)
    assert metrics["suite"] == "standard" and metrics["clean"] >= 0.8  # a working classifier
    checks = metrics["checks"]

    # 1. Never above pyautoattack's APGD-CE + APGD-T on the same points, per norm.
    model, meta = checkpoint.load(distilled)
    x, y = load_tensors("mnist-5k", "test", n=N_POINTS)
    for norm in NORMS:
        theirs = autoattack_flags(model.eval(), x, y, norm, meta["epsilons"][norm])
        ours = result.robust[norm]
        assert ours.sum() <= theirs.sum(), f"{norm}: ours {ours.sum()} > pyautoattack {theirs.sum()}"

    # 2. The masking is flagged, on enough points to be conclusive.
    gradients = checks["sanity"]["gradients"]
    assert gradients["status"] == "failed" and gradients["n"] >= 50, gradients
    flagged = {norm: c for norm, c in checks["ce_vs_dlr"].items() if c["status"] == "failed"}
    assert flagged, checks["ce_vs_dlr"]
    # A failure on fewer than 50 points is still evidence (status.py); at least one is conclusive.
    assert any(c["n"] >= 50 for c in flagged.values()), flagged
    assert all(c["share"] > 0.5 for c in flagged.values()), flagged
    assert checks["status"] == "failed"

    # 3. The job's warnings name the component that broke it.
    warnings = result_warnings(metrics)
    for norm in flagged:
        assert any(w.startswith(f"{norm}: APGD-T (targeted DLR loss) fooled") and "APGD-T is the component "
                   "that broke this model" in w for w in warnings), warnings
    assert any(w.startswith("sanity/gradients:") for w in warnings), warnings


@pytest.mark.slow
def test_the_same_checks_stay_quiet_without_distillation(natural, tmp_path) -> None:
    metrics, _ = _evaluate(natural, tmp_path)
    assert metrics["clean"] >= 0.8
    checks = metrics["checks"]
    gradients = checks["sanity"]["gradients"]
    assert gradients["status"] == "passed" and gradients["zero"] == 0 and gradients["n"] >= 50, gradients
    assert all(c["status"] != "failed" for c in checks["ce_vs_dlr"].values()), checks["ce_vs_dlr"]
    assert not any("APGD-T is the component" in w or w.startswith("sanity/gradients")
                   for w in result_warnings(metrics))
    # the default suite on mnist-5k: its l_2 / l_1 / union are flagged as upper bounds (not a check)
    assert metrics["dataset"] == "mnist-5k"
    assert any(w.startswith("on mnist-5k the 'standard' suite over-states") for w in result_warnings(metrics))
