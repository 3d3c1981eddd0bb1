"""The service on a real multi-node Ray cluster on one machine (issue 23, items 2 and 3).

One cluster for the module (``cluster_support.LocalRayCluster``): a head without CPUs and two
worker nodes, each a separate ``ray start`` process with one CPU and its own custom resource
(``node_a``, ``node_b``); the full service (API + dispatcher, in this process) pointed at the head's
Jobs API as with ``RAY_ADDRESS``. Job drivers run on the head (they reserve no CPU), Ray Train
workers and Tune trials on the worker nodes; where each ran is read back from Ray's state API
(actor -> node id -> node name).

1. A 2-worker DDP training job: its two Ray Train workers run on two different nodes, and its
   per-epoch training loss equals a single-process run of the same spec (``run_training`` in
   this process) to the tolerance ``tests/test_ray_train.py`` holds DDP to (rel 1e-3: the same
   data order and global batch, up to the all-reduce's summation order).
2. A sweep of two trials, two at once: one trial actor per node.
3. Last (it kills a node): two identical 3-epoch jobs, one worker each (one per node); during
   epoch 2 the node holding one job's worker is SIGKILLed whole (``ray start``, raylet, agents,
   workers). That job's Ray Train run fails, the service retries it (``max_retries=1``: queued at
   once, dispatched once its retry delay has passed, the default 30 s: by then the GCS has
   declared the node dead) and
   attempt 2 resumes from the epoch-1 checkpoint on a replacement node (started once the GCS has
   marked the lost one dead, as KubeRay replaces a pod); its final weights, optimiser and method
   state equal the uninterrupted job's bit for bit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_support import LocalRayCluster, local_ray_cluster, ray_actors, ray_job_hex
from exec_support import (
    checkpoint_state,
    live_service,
    service_settings,
    state_diffs,
    tiny_train_spec,
    wait_for,
)

from service.core.config import Settings
from service.ray_local import free_port
from workers.contract.status import is_settled

pytestmark = pytest.mark.slow

NODES = {"node_a": 1, "node_b": 1}
TRAIN_WORKER = "RayTrainWorker"  # Ray Train v2's worker actor class
CHANNEL = "RunChannel"  # the driver <-> workers channel (workers.ray_entry.channel)

# A tiny DDP run: 128 points, global batch 32 (16 per worker), 2 epochs of 4 steps.
DDP_SPEC: dict[str, Any] = {
    "kind": "train", "method": "at-linf", "dataset": "mnist-5k", "model": "small-cnn", "epochs": 2,
    "train_n": 128, "batch_size": 32, "seed": 1, "monitor_n": 0, "eval_n": 16, "checks_n": 0,
    "params": {"attack.steps_linf": 2}, "resources": {"num_workers": 2, "cpus_per_worker": 1},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    with local_ray_cluster(NODES) as c:
        print(f"\ncluster up: head {c.timings['head_s']:.1f} s, all nodes {c.timings['cluster_s']:.1f} s; "
              f"nodes {{{', '.join(f'{n}: {w.node_id[:12]}' for n, w in c.workers.items())}}}")
        yield c


@pytest.fixture(scope="module")
def service(cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    assert cluster.dashboard_url is not None
    # The service's own retry delay (the test settings' default is none): the node-loss test needs it.
    settings = service_settings(tmp_path_factory.mktemp("home"), cluster.dashboard_url, free_port(),
                                retry_delay_s=Settings.model_fields["retry_delay_s"].default)
    with live_service(settings) as client:
        # Polled while the nodes train on a shared 2-core box: an answer took over 30 s there at a
        # load average of 200-400 (other engineers' runs).
        client.timeout = httpx.Timeout(180.0)
        client.cluster = cluster
        client.settings = settings
        yield client


def _submit(service: Any, spec: dict[str, Any]) -> int:
    """Submit once: re-sent with the same Idempotency-Key while the loaded service answers 5xx."""
    key = f"nodes-{uuid.uuid4().hex}"

    def attempt() -> Any:
        try:
            r = service.post("/v1/jobs", json=spec, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            return None
        if r.status_code >= 500:
            return None
        assert r.status_code in (200, 201), r.text
        return r.json()

    return int(wait_for(attempt, 600, "the service to accept the job", interval_s=1.0)["id"])


def _get(service: Any, path: str, **params: Any) -> Any:
    """GET ``path`` as JSON, retried while the service answers 5xx or not at all: on a box at a load
    average of hundreds its SQLite-backed answers time out (503) now and then; a poll is not a check."""
    def attempt() -> Any:
        try:
            r = service.get(path, params=params or None)
        except httpx.TransportError:
            return None
        return r.json() if r.status_code < 500 else None

    return wait_for(attempt, 600, f"the service to answer GET {path}", interval_s=1.0)


def _finished(service: Any, job_id: int, timeout_s: float = 900) -> dict[str, Any]:
    """The job once settled: a failure with a retry left is not the end (its retry is queued next)."""
    def settled() -> Any:
        job = _get(service, f"/v1/jobs/{job_id}")
        return is_settled(job["status"], job["attempt"], job["max_retries"]) and job

    job = wait_for(settled, timeout_s, f"job {job_id} to end", interval_s=0.5)
    assert job["status"] == "succeeded", (job, service.get(f"/v1/jobs/{job_id}/logs").text[-3000:])
    return job


def _events(service: Any, job_id: int, type_: str) -> list[dict[str, Any]]:
    return _get(service, f"/v1/jobs/{job_id}/events", limit=1000, type=type_)["events"]


def _actors(service: Any, ray_job_id: str) -> list[dict[str, Any]]:
    """Every actor of a service job's Ray job (alive or dead), with the node it ran on."""
    url = service.cluster.dashboard_url
    return ray_actors(url, None, ray_job_hex(url, ray_job_id))


def _history(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_two_worker_ddp_job_spans_two_nodes_and_matches_one_process(service: Any, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from workers import checkpoint
    from workers.contract.spec import TrainSpec
    from workers.training.loop import run_training
    from workers.training.runtime import LocalRuntime

    cluster: LocalRayCluster = service.cluster
    started = time.monotonic()
    job_id = _submit(service, DDP_SPEC)
    job = _finished(service, job_id)
    seconds = time.monotonic() - started
    actors = _actors(service, job["ray_job_id"])
    workers = [a for a in actors if a["class_name"] == TRAIN_WORKER]
    _assert_channels_on_the_head(cluster, actors)
    placed = sorted(cluster.node_name(a["node_id"]) for a in workers)
    # Two workers, one group (no restart), one per node: the placement the cluster offers.
    assert placed == ["node_a", "node_b"], placed
    assert len({a["node_id"] for a in workers}) == 2

    # The same spec in one process, here.
    torch.set_num_threads(1)
    local = {k: v for k, v in DDP_SPEC.items() if k not in ("kind", "resources")}
    single_out = tmp_path / "single"
    run_training(TrainSpec(**local).resolve(), single_out, runtime=LocalRuntime("cpu"))
    job_dir = Path(service.settings.job_dir(job_id))
    ddp, single = _history(job_dir / "history.jsonl"), _history(single_out / "history.jsonl")
    assert [h["epoch"] for h in ddp] == [h["epoch"] for h in single] == [1, 2]
    for a, b in zip(ddp, single, strict=True):
        assert a["losses"]["ce"] == pytest.approx(b["losses"]["ce"], rel=1e-3), (a["losses"], b["losses"])
    wa = load_file(str(job_dir / checkpoint.SUBDIR / checkpoint.WEIGHTS_FILE))
    wb = load_file(str(single_out / checkpoint.SUBDIR / checkpoint.WEIGHTS_FILE))
    max_diff = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    where = ", ".join(f"{cluster.node_name(a['node_id'])} ({a['node_id'][:12]})" for a in workers)
    print(f"\nDDP: 2 workers on {where}; "
          f"loss_ce per epoch DDP {[round(h['losses']['ce'], 6) for h in ddp]} vs one process "
          f"{[round(h['losses']['ce'], 6) for h in single]}; weights max abs diff {max_diff:.3g}; "
          f"job {seconds:.0f} s")


def test_a_sweeps_trials_spread_across_the_nodes(service: Any) -> None:
    cluster: LocalRayCluster = service.cluster
    base = tiny_train_spec(monitor_n=8, eval_n=16)
    sweep = {"kind": "sweep", "base": base, "param_space": {"lr": {"grid": [0.01, 0.1]}}, "num_samples": 1,
             "metric": "loss_ce", "mode": "min", "max_concurrent_trials": 2, "scheduler": None}
    started = time.monotonic()
    job_id = _submit(service, sweep)
    job = _finished(service, job_id)
    seconds = time.monotonic() - started
    trials = _get(service, f"/v1/jobs/{job_id}/trials")["trials"]
    assert [t["status"] for t in trials] == ["succeeded", "succeeded"], trials
    actors = _actors(service, job["ray_job_id"])
    # Tune's actor for a trainable wrapped by tune.with_resources (our TrainTrial).
    trial_actors = [a for a in actors if a["class_name"].endswith("ResourceTrainable")]
    nodes = sorted(cluster.node_name(a["node_id"]) for a in trial_actors)
    assert set(nodes) == {"node_a", "node_b"}, (nodes, [(a["class_name"], a["node_id"]) for a in actors])
    print(f"\nsweep: 2 trials, trial actors on {nodes}; best {job['metrics']['best_trial_id']}; "
          f"{seconds:.0f} s")


def _assert_channels_on_the_head(cluster: LocalRayCluster, actors: list[dict[str, Any]]) -> None:
    """A job's channel actor lives with its driver on the head (``open_channel``): on a worker node,
    losing that node would fail runs that had nothing there (CI 2026-12-04, soft affinity)."""
    channels = [a for a in actors if a["class_name"] == CHANNEL]
    assert channels, [a["class_name"] for a in actors]
    assert {a["node_id"] for a in channels} == {cluster.head_node_id}, [
        (a["state"], cluster.node_name(a["node_id"])) for a in channels]


def _when(evs: list[dict[str, Any]], to: str, attempt: int | None = None) -> float:
    """When (epoch seconds) the job first moved to ``to`` (in ``attempt``)."""
    for e in evs:
        if e["data"].get("to") == to and (attempt is None or e["attempt"] == attempt):
            return datetime.fromisoformat(e["created_at"]).timestamp()
    raise AssertionError(f"no transition to {to} in {[(e['attempt'], e['data']) for e in evs]}")


def test_a_node_lost_mid_run_costs_a_retry_not_the_result(service: Any) -> None:
    """Last of the module: it kills a node (and replaces it)."""
    cluster: LocalRayCluster = service.cluster
    epochs = 3
    spec = tiny_train_spec(epochs=epochs, max_steps=None, train_n=320, max_retries=1)
    killed, reference = _submit(service, spec), _submit(service, spec)

    def epoch_two_running_on() -> str | None:
        """The node holding the job's worker, once its epoch-1 checkpoint is written (epoch 2 runs)."""
        if not any(e["data"].get("kind") == "checkpoint" for e in _events(service, killed, "artifact")):
            return None
        history = _get(service, f"/v1/jobs/{killed}/metrics")["history"]
        reported = [h["epoch"] for h in history]
        if max(reported, default=0) > 1:  # too late to kill during epoch 2: say so now
            raise AssertionError(f"epoch 2 ended before the node could be killed: {reported}")
        if reported != [1]:
            return None
        job = _get(service, f"/v1/jobs/{killed}")
        if not job["ray_job_id"]:
            return None
        alive = [a for a in _actors(service, job["ray_job_id"])
                 if a["class_name"] == TRAIN_WORKER and a["state"] == "ALIVE"]
        return cluster.node_name(alive[0]["node_id"]) if len(alive) == 1 else None

    node = wait_for(epoch_two_running_on, 600, "the job's epoch-1 checkpoint and its live worker", 0.3)
    assert node in NODES, node
    epochs_before = [h["epoch"] for h in _get(service, f"/v1/jobs/{killed}/metrics")["history"]]
    pids = cluster.kill_node(node)
    killed_at = time.time()
    dead_after = cluster.wait_node_dead(node)
    # A replacement node with the same resources, as KubeRay would start for a lost pod.
    replaced_at = time.time()
    cluster.start_node(node)
    replacement_s = time.time() - replaced_at

    job = _finished(service, killed)
    assert job["attempt"] == 2, job  # the service's retry recovered it
    evs = _events(service, killed, "status")
    transitions = [(e["data"]["from"], e["data"]["to"]) for e in evs]
    assert ("running", "failed") in transitions and ("failed", "queued") in transitions, transitions
    second = [e["data"]["message"] for e in _events(service, killed, "log") if e["attempt"] == 2]
    resumed = [m for m in second if "resuming at epoch" in m]
    assert resumed, second
    start_epoch = int(resumed[0].split("resuming at epoch ", 1)[1].split()[0])
    assert 1 <= start_epoch < epochs, f"attempt 2 trained nothing: {resumed[0]}"
    ref = _finished(service, reference)
    assert ref["attempt"] == 1, ref  # the other node's job never noticed
    _assert_channels_on_the_head(cluster, _actors(service, ref["ray_job_id"]))

    job_dir = service.settings.job_dir
    a, b = checkpoint_state(job_dir(killed)), checkpoint_state(job_dir(reference))
    assert a["progress"] == b["progress"] == (epochs, epochs * 10)
    diffs = state_diffs(a, b)
    unequal = {k: d for k, d in diffs.items() if d != 0.0}
    assert not unequal, f"the resumed run differs from the uninterrupted one: {unequal}"
    metrics = ("clean", "linf", "l2", "l1", "union")
    assert {k: job["metrics"][k] for k in metrics} == {k: ref["metrics"][k] for k in metrics}

    failed_at = _when(evs, "failed", 1)
    running2_at = _when(evs, "running", 2)
    dispatched2_at = _when(evs, "dispatching", 2)
    # The retry was queued at once but dispatched only once its delay (settings.retry_delay_s) had
    # passed, so it was placed after the GCS had declared the lost node dead: before that, it can
    # land on the dead node and fail again (CI, 2026-12-03: "The actor never ran - it was cancelled
    # before it started running").
    assert dispatched2_at - failed_at >= service.settings.retry_delay_s - 1, (failed_at, dispatched2_at)
    assert dispatched2_at >= killed_at + dead_after, (killed_at, dead_after, dispatched2_at)
    done_at = _when(evs, "succeeded", 2)
    tensors = sum(k.startswith("model.") for k in diffs)
    print(f"\nNODE LOST: SIGKILLed {node} ({len(pids)} processes) with epochs {epochs_before} reported; "
          f"GCS marked it dead after {dead_after:.1f} s; job failed {failed_at - killed_at:.1f} s after "
          f"the kill; replacement node up in {replacement_s:.1f} s; attempt 2 dispatched "
          f"{dispatched2_at - failed_at:.1f} s after the failure (retry delay "
          f"{service.settings.retry_delay_s:.0f} s), running "
          f"{running2_at - killed_at:.1f} s and succeeded {done_at - killed_at:.1f} s after the kill, "
          f"resumed at epoch {start_epoch} of {epochs}; recovered by the service's retry (max_retries=1); "
          f"final weights, optimiser and method state equal to the uninterrupted job's bit for bit "
          f"({tensors} weight tensors)")
