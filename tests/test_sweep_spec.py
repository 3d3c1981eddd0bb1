"""The sweep spec: validation, deterministic expansion, best-trial choice, resource sizing.

Torch-free and Ray-free (the service imports this module), and fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.contract.sweep import (
    MAX_TRIALS,
    MAX_TRIM,
    TRIAL_CPU,
    Domain,
    Resources,
    SweepSpec,
    apply_overrides,
    best_trial,
    parse_sweep_spec,
    plan_resources,
    split_base,
    split_key,
    trial_score,
)

BASE = {"kind": "train", "method": "ramp", "dataset": "mnist-5k", "epochs": 2, "seed": 7,
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5, "use_gpu": False}, "max_retries": 1}


def sweep(param_space, **extra):
    return parse_sweep_spec({"kind": "sweep", "base": BASE, "param_space": param_space} | extra)


def test_example_from_the_issue_expands_to_the_grid_with_sampled_lr():
    spec = sweep({
        "params.ramp.lambda": {"grid": [0.5, 1.5, 5]},
        "epsilons.l1": {"grid": [8, 12, 16]},
        "lr": {"uniform": [0.01, 0.1]},
    }, num_samples=1, metric="union", mode="max", max_concurrent_trials=2, scheduler=None)
    trials = spec.trials()
    assert spec.num_trials == len(trials) == 9
    assert [t.trial_id for t in trials] == [f"trial_{i:04d}" for i in range(9)]
    # first key slowest, second fastest
    assert [(t.overrides["params.ramp.lambda"], t.overrides["epsilons.l1"]) for t in trials] == [
        (lam, eps) for lam in (0.5, 1.5, 5) for eps in (8, 12, 16)
    ]
    for t in trials:
        assert list(t.overrides) == ["params.ramp.lambda", "epsilons.l1", "lr"]
        assert 0.01 <= t.overrides["lr"] <= 0.1
        assert t.spec["params"] == {"ramp.lambda": t.overrides["params.ramp.lambda"]}
        assert t.spec["epsilons"] == {"l1": t.overrides["epsilons.l1"]}
        assert t.spec["lr"] == t.overrides["lr"]
        # service-only fields are not part of the training spec
        assert not {"kind", "resources", "max_retries"} & set(t.spec)
    assert len({t.overrides["lr"] for t in trials}) == 9  # drawn per trial
    assert spec.resources() == Resources(num_workers=2, cpus_per_worker=0.5, use_gpu=False)


def test_expansion_is_deterministic_and_seeded():
    space = {"lr": {"loguniform": [1e-3, 1e-1]}, "seed": {"randint": [0, 1000]},
             "params.ramp.pairing": {"choice": ["kl", "mse", "cos"]}}
    a = sweep(space, num_samples=5).trials()
    b = sweep(space, num_samples=5).trials()
    assert [t.overrides for t in a] == [t.overrides for t in b]
    other = sweep(space, num_samples=5, seed=123).trials()
    assert [t.overrides for t in other] != [t.overrides for t in a]
    # default sampling seed is the base spec's seed
    assert [t.overrides for t in sweep(space, num_samples=5, seed=7).trials()] == [t.overrides for t in a]


def test_num_samples_repeats_the_grid():
    spec = sweep({"params.ramp.lambda": {"grid": [1, 2]}, "epsilons.l1": {"grid": [8, 12]}}, num_samples=3)
    trials = spec.trials()
    assert spec.num_trials == len(trials) == 12
    assert [t.overrides for t in trials[:4]] == [t.overrides for t in trials[4:8]]


@settings(max_examples=25, deadline=None)
@given(low=st.floats(1e-4, 1.0), span=st.floats(1e-3, 5.0), n=st.integers(1, 8))
def test_random_domains_stay_in_bounds_with_the_right_types(low, span, n):
    high = low + span
    spec = sweep({"lr": {"loguniform": [low, min(high, 10.0)]}, "train_n": {"randint": [1, 50]},
                  "momentum": {"uniform": [0.0, 0.5]}}, num_samples=n)
    for t in spec.trials():
        assert low <= t.overrides["lr"] <= min(high, 10.0) * (1 + 1e-12)
        assert isinstance(t.overrides["train_n"], int) and 1 <= t.overrides["train_n"] < 50
        assert 0.0 <= t.overrides["momentum"] <= 0.5


def test_split_key_and_apply_overrides():
    assert split_key("params.ramp.lambda") == ("params", "ramp.lambda")
    assert split_key("epsilons.l1") == ("epsilons", "l1")
    assert split_key("model_args.width") == ("model_args", "width")
    assert split_key("lr") == ("lr",)
    base = {"epsilons": {"linf": 0.3}, "params": {"gp.beta": 0.5}, "lr": 0.1}
    out = apply_overrides(base, {"epsilons.l1": 12, "params.ramp.lambda": 5, "lr": 0.2})
    assert out == {"epsilons": {"linf": 0.3, "l1": 12}, "params": {"gp.beta": 0.5, "ramp.lambda": 5},
                   "lr": 0.2}
    assert base == {"epsilons": {"linf": 0.3}, "params": {"gp.beta": 0.5}, "lr": 0.1}  # untouched


@pytest.mark.parametrize(("space", "needle"), [
    ({"nope": {"grid": [1]}}, "'nope': unknown field"),
    ({"lr.x": {"grid": [1]}}, "'lr.x': field 'lr' has no sub-fields"),
    ({"params": {"grid": [1]}}, "address one param"),
    ({"epsilons": {"grid": [1]}}, "address one entry"),
    ({"params.nope": {"grid": [1]}}, "'params.nope': value 1: unknown param 'nope'"),
    ({"params.trades.beta": {"grid": [1]}}, "does not apply to method 'ramp'"),
    ({"gp.beta": {"grid": [0.5]}}, "'gp.beta': unknown field 'gp'"),
    ({"params.gp.beta": {"grid": [0.5, 2]}}, "'params.gp.beta': value 2: param 'gp.beta' must be <= 1.0"),
    ({"epsilons.l1": {"grid": [8, -1]}}, "'epsilons.l1': value -1: epsilons: epsilon for l1 must be"),
    ({"epsilons.l7": {"grid": [1]}}, "unknown norm 'l7'"),
    ({"lr": {"uniform": [0.01, 20]}}, "'lr': value 20.0: lr: Input should be less than or equal to 10"),
    ({"epochs": {"randint": [0, 3]}}, "'epochs': value 0"),
    ({"method": {"grid": ["ramp", "bogus"]}}, "unknown method 'bogus'"),
    ({"params.ramp.q": {"grid": ["l1"]}}, "ramp.q and ramp.r must be different norms"),
])
def test_invalid_keys_and_values_name_the_key(space, needle):
    with pytest.raises(ValueError, match="invalid sweep spec") as err:
        sweep(space)
    assert needle in str(err.value)


@pytest.mark.parametrize(("domain", "needle"), [
    ({"grid": []}, "grid needs at least one value"),
    ({"grid": [1], "choice": [2]}, "exactly one of"),
    ({}, "exactly one of"),
    ({"uniform": [0.1, 0.1]}, "low < high"),
    ({"loguniform": [0.0, 0.1]}, "loguniform needs low > 0"),
    ({"randint": [5, 2]}, "low < high"),
    ({"normal": [0, 1]}, "Extra inputs are not permitted"),
])
def test_invalid_domains(domain, needle):
    with pytest.raises(ValueError, match=needle):
        sweep({"lr": domain})


def test_sweep_level_validation():
    with pytest.raises(ValueError, match="unknown metric 'accuracy'"):
        sweep({"lr": {"grid": [0.1]}}, metric="accuracy")
    with pytest.raises(ValueError, match="mode"):
        sweep({"lr": {"grid": [0.1]}}, mode="best")
    # trial-level rules are checked by the one expansion
    unmonitored = parse_sweep_spec({"base": BASE | {"monitor_n": 0}, "param_space": {"lr": {"grid": [0.1]}}})
    with pytest.raises(ValueError, match="monitor_n = 0"):
        unmonitored.expand()
    # a loss metric needs no monitor set
    parse_sweep_spec({"base": BASE | {"monitor_n": 0}, "param_space": {"lr": {"grid": [0.1]}},
                      "metric": "loss_ce", "mode": "min"}).expand()
    with pytest.raises(ValueError, match=f"at most {MAX_TRIALS}"):
        sweep({"seed": {"grid": list(range(40))}, "lr": {"grid": [0.01 * (i + 1) for i in range(30)]}})
    with pytest.raises(ValueError, match="param_space"):
        sweep({})
    with pytest.raises(ValueError, match="kind"):
        parse_sweep_spec({"kind": "train", "base": BASE, "param_space": {"lr": {"grid": [0.1]}}})
    with pytest.raises(ValueError, match="num_workers"):
        parse_sweep_spec({"base": BASE | {"resources": {"num_workers": 0}},
                          "param_space": {"lr": {"grid": [1]}}})
    with pytest.raises(ValueError, match="base: .*unknown dataset"):
        parse_sweep_spec({"base": BASE | {"dataset": "nope"}, "param_space": {"lr": {"grid": [1]}}})


def test_scheduler_and_defaults():
    asha = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    spec = sweep({"lr": {"grid": [0.1]}}, scheduler=asha)
    assert spec.scheduler is not None and spec.scheduler.grace_period == 1
    assert [t.spec.epochs for t in spec.expand()] == [2]
    assert (spec.metric, spec.mode, spec.num_samples, spec.max_concurrent_trials) == ("union", "max", 1, 2)
    with pytest.raises(ValueError, match="reduction_factor"):
        sweep({"lr": {"grid": [0.1]}}, scheduler={"type": "asha", "reduction_factor": 1})
    with pytest.raises(ValueError, match="type"):
        sweep({"lr": {"grid": [0.1]}}, scheduler={"type": "hyperband"})
    # epochs swept: each trial resolves its own
    assert [t.spec.epochs for t in sweep({"epochs": {"grid": [1, 4, 3]}}).expand()] == [1, 4, 3]


def test_base_kinds_and_init_from_forms():
    train, res = split_base({"kind": "finetune", "init_from": {"checkpoint": "/ck"},
                             "resources": {"num_workers": 3}})
    assert train == {"init_from": "/ck"} and res.num_workers == 3
    spec = parse_sweep_spec({"base": {"kind": "finetune", "method": "ramp", "init_from": {"job_id": 4}},
                             "param_space": {"lr": {"grid": [0.01]}}})
    assert spec.trials()[0].spec["init_from"].startswith("<checkpoint of job 4")
    with pytest.raises(ValueError, match="names a job"):  # validates, but cannot run
        spec.expand()
    with pytest.raises(ValueError, match="needs base.init_from"):
        split_base({"kind": "finetune"})
    with pytest.raises(ValueError, match="only valid for base.kind 'finetune'"):
        split_base({"kind": "train", "init_from": "/ck"})
    with pytest.raises(ValueError, match="base.kind"):
        split_base({"kind": "eval"})


def _t(trial_id, values, metric="union"):
    return {"trial_id": trial_id, "metrics": [{"epoch": i + 1, metric: v} for i, v in enumerate(values)]}


def test_best_trial_uses_the_last_recorded_value():
    trials = [_t("a", [0.9, 0.2]), _t("b", [0.1, 0.5]), _t("c", [0.3, 0.4])]
    assert best_trial(trials, "union", "max") == "b"  # a peaked early but ended lowest
    assert best_trial(trials, "union", "min") == "a"


def test_best_trial_ignores_unscored_trials_and_breaks_ties_by_order():
    nan = float("nan")
    trials = [{"trial_id": "failed", "metrics": []}, _t("x", [0.4]), _t("nan", [nan]), _t("y", [0.4]),
              {"trial_id": "other", "metrics": [{"epoch": 1, "clean": 0.99}]}]
    assert best_trial(trials, "union", "max") == "x"
    assert best_trial(trials, "union", "min") == "x"
    assert best_trial([{"trial_id": "f", "metrics": []}], "union", "max") is None
    # a missing value in the last epoch falls back to the last epoch that has it
    assert trial_score([{"union": 0.3}, {"clean": 0.9}], "union") == 0.3


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1), min_size=1, max_size=4), min_size=1, max_size=8),
       st.sampled_from(["max", "min"]))
def test_best_trial_matches_a_direct_computation(histories, mode):
    trials = [_t(f"t{i}", h) for i, h in enumerate(histories)]
    last = [h[-1] for h in histories]
    target = max(last) if mode == "max" else min(last)
    assert best_trial(trials, "union", mode) == f"t{last.index(target)}"


def test_plan_resources_on_two_cpus():
    one = Resources(num_workers=1, cpus_per_worker=1)
    plan = plan_resources(one, total_cpus=2, total_gpus=0, max_concurrent_trials=2)
    assert plan.max_concurrent_trials == 2 and plan.cpus_per_worker == pytest.approx(0.99)
    assert plan.max_concurrent_trials * plan.cpus_per_trial <= 2 + 1e-9
    two = Resources(num_workers=2, cpus_per_worker=1)
    plan = plan_resources(two, total_cpus=2, total_gpus=0, max_concurrent_trials=4)
    assert plan.max_concurrent_trials == 1 and plan.cpus_per_worker == pytest.approx(0.995)
    big = Resources(num_workers=1, cpus_per_worker=8)
    plan = plan_resources(big, total_cpus=2, total_gpus=0, max_concurrent_trials=None)
    assert plan.max_concurrent_trials == 1 and plan.cpus_per_worker == pytest.approx(1.99)
    with pytest.raises(ValueError, match="GPU"):
        plan_resources(Resources(num_workers=2, use_gpu=True), total_cpus=8, total_gpus=1,
                       max_concurrent_trials=2)
    gpu = plan_resources(Resources(num_workers=1, use_gpu=True), total_cpus=16, total_gpus=2,
                         max_concurrent_trials=8)
    assert gpu.max_concurrent_trials == 2 and gpu.use_gpu


@settings(max_examples=200, deadline=None)
@given(total=st.floats(0.05, 64), k=st.integers(1, 8), cpw=st.floats(0.01, 16),
       conc=st.one_of(st.none(), st.integers(1, 16)))
def test_plan_resources_never_oversubscribes(total, k, cpw, conc):
    try:
        plan = plan_resources(Resources(num_workers=k, cpus_per_worker=cpw), total_cpus=total,
                              total_gpus=0, max_concurrent_trials=conc)
    except ValueError as e:  # only when even one trial with one CPU granule per worker cannot fit
        assert "do not fit" in str(e)
        assert (total - TRIAL_CPU) / k < 1e-4 + 1e-9
        return
    assert plan.max_concurrent_trials >= 1
    assert conc is None or plan.max_concurrent_trials <= conc
    assert plan.max_concurrent_trials * plan.cpus_per_trial <= total + 1e-9
    assert 0 < plan.cpus_per_worker <= cpw
    if plan.max_concurrent_trials > 1:  # concurrency never bought by starving the workers
        assert plan.cpus_per_worker >= (1 - MAX_TRIM) * cpw - 1e-4
    # and not needlessly serial: one more trial would not fit even with trimmed workers
    if conc is None or plan.max_concurrent_trials < conc:
        more = plan.max_concurrent_trials + 1
        assert more * (TRIAL_CPU + (1 - MAX_TRIM) * k * cpw) > total - 1e-9


def test_domain_sampling_kinds():
    import random

    rng = random.Random(0)
    assert Domain(randint=(3, 4)).sample(rng) == 3
    assert Domain(choice=["a"]).sample(rng) == "a"
    with pytest.raises(ValueError, match="expanded"):
        Domain(grid=[1]).sample(rng)
    assert Domain(randint=(0, 10)).boundary_values() == [0, 9]


def test_spec_round_trips_as_json():
    spec = sweep({"lr": {"grid": [0.1, 0.2]}})
    again = SweepSpec.model_validate(json.loads(spec.model_dump_json()))
    assert [t.overrides for t in again.trials()] == [t.overrides for t in spec.trials()]


def test_importing_the_spec_pulls_in_neither_torch_nor_ray():
    code = ("import sys, workers.contract.sweep; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_expansion_resolves_each_trial_once_and_names_the_trial_a_rule_fails_in():
    # each value is valid against the base; one combination is not
    spec = sweep({"params.ramp.q": {"grid": ["linf", "l2"]}, "params.ramp.r": {"grid": ["l1", "l2"]}})
    with pytest.raises(ValueError, match=r"trial 3 .*'params.ramp.r': 'l2'\}: .*must be different norms"):
        spec.expand()
    ok = sweep({"params.ramp.q": {"grid": ["linf", "l2"]}}).expand()
    assert [type(t.spec).__name__ for t in ok] == ["ResolvedSpec", "ResolvedSpec"]
    assert [t.spec.params["ramp.q"] for t in ok] == ["linf", "l2"] and ok[1].trial_id == "trial_0001"
