"""How a sweep trial trains and what Ray reserves for it, from the sweep's ``ResourcePlan``
(``workers.contract.sweep.plan_resources``: ``max_concurrent_trials`` trials always fit at once, so
a small machine never deadlocks)."""

from __future__ import annotations

from typing import Any

from workers.contract.sweep import ResourcePlan

IN_TRIAL, RAY_TRAIN = "in-trial", "ray-train"  # how a trial trains (``TrialRecord.runner``)


def _cpus(x: float) -> float:
    # Ray counts CPUs in 1e-4 units; the plan's shares are such multiples up to float noise.
    return round(x, 4)


def trial_runner(plan: ResourcePlan) -> str:
    """How a trial trains: in its own actor with one worker, on Ray Train with more."""
    return IN_TRIAL if plan.num_workers == 1 else RAY_TRAIN


def trial_resources(plan: ResourcePlan) -> dict[str, float]:
    """What Tune reserves for one trial actor.

    An in-trial run trains in the actor, so the actor takes the trial's whole share
    (``plan.cpus_per_trial``, and its GPU); a Ray Train trial's actor only waits on its
    TorchTrainer and takes ``plan.trial_cpu``, its workers reserve the rest. Either way no trial
    asks for anything after Tune admitted it beyond what ``plan_resources`` sized, so
    ``max_concurrent_trials`` trials always fit at once (no deadlock on 2 CPUs).
    """
    if trial_runner(plan) == IN_TRIAL:
        return {"cpu": _cpus(plan.cpus_per_trial)} | ({"gpu": 1.0} if plan.use_gpu else {})
    return {"cpu": _cpus(plan.trial_cpu)}


def trial_threads(plan: ResourcePlan) -> int:
    """Torch threads of a trial's actor: its workers' CPU share in-trial, one waiting on Ray Train."""
    if trial_runner(plan) == IN_TRIAL:
        return max(1, round(plan.num_workers * plan.cpus_per_worker))
    return 1


def best_final_resources(
    plan: ResourcePlan, total_cpus: float, node_cpus: float | None = None
) -> dict[str, float]:
    """The best trial's evaluation runs once every trial has ended: it takes what the concurrent
    trials held (their CPUs, one GPU), so it never waits on resources the sweep itself freed.

    ``node_cpus``: the CPUs of the cluster's largest node. The evaluation is one task on one node:
    asking for the whole cluster's CPUs on a cluster of several smaller nodes would leave it
    pending forever (found on two one-CPU worker nodes: the trials ran, their evaluation never did).
    """
    cpus = min(total_cpus, plan.max_concurrent_trials * plan.cpus_per_trial)
    if node_cpus is not None:
        cpus = min(cpus, node_cpus)
    return {"num_cpus": _cpus(cpus), "num_gpus": 1.0 if plan.use_gpu else 0.0}


def largest_node_cpus(nodes: list[dict[str, Any]]) -> float | None:
    """The CPUs of the largest alive node in ``ray.nodes()``'s listing (None: no node lists any)."""
    cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes if n.get("Alive")]
    return max(cpus) if cpus else None

