"""Run a training spec as a Ray Train ``TorchTrainer`` and hear its progress in the driver.

``run_train_job(spec, out_dir, ...)`` is the Ray counterpart of
``workers.training.loop.run_training(spec, out_dir, ...)``: same spec, same files in ``out_dir``
(``checkpoint/``, ``history.jsonl``, ``metrics.json``), same callbacks, same final metrics; it runs
on ``resources["num_workers"]`` Ray Train workers (gloo on CPU, nccl with ``use_gpu``).

How the per-epoch reports reach the caller's callbacks: rank 0 sends every callback event to a
``RunChannel`` actor (``workers.ray_entry.channel``) owned by the driver; ``fit()`` runs in a helper
thread while the calling thread polls the channel and replays the events, in order, into the
callbacks. Chosen over a Ray Train ``UserCallback`` (it runs in the Train controller actor, not the
driver, and only sees ``ray.train.report`` calls, not steps or the final evaluation) and over the
result's ``metrics_dataframe`` (only after the run ends). Callbacks therefore run in the caller's
thread, live, and a callback that raises stops the run cooperatively, as it would locally.

Ray Train keeps its own copy of every epoch's checkpoint under ``storage_path/train`` (default
``out_dir/ray``); Train V2 restores a run with the same storage path and name automatically, so a
fresh (``resume=False``) run first forgets the previous one, and a resumed run picks up the newest
reported checkpoint (``workers.ray_entry.runtime.stage_resume``).

Cancel: set ``stop_event`` (or send SIGINT/SIGTERM with ``handle_signals=True``): the workers stop
at their next optimiser step, Ray releases the workers' placement group, and
``TrainingCancelled`` is raised with the last epoch's checkpoint intact.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from workers.contract.attempts import AttemptFence
from workers.contract.ray_names import current_run_name
from workers.contract.spec import ResolvedSpec, require_resolved
from workers.contract.sweep import Resources, is_unresolved_init
from workers.ray_entry.channel import Event, RunChannel
from workers.ray_entry.runtime import (
    CANCELLED,
    CHANNEL_NAMESPACE,
    TRAIN_END,
    TrainingCancelled,
    replay_event,
    train_worker,
)
from workers.training.callbacks import Callback, CallbackList

RUN_NAME = "train"  # the Ray Train run's name under its storage path
CHECKPOINTS_KEPT = 2


class TrainingFailed(RuntimeError):
    """The Ray Train run failed; the message carries the workers' errors."""


def ensure_ray() -> None:
    """Connect to Ray (RAY_ADDRESS, or a Ray job's cluster) or start a local instance."""
    if not ray.is_initialized():
        ray.init()


def open_channel() -> tuple[Any, str]:
    """A fresh named ``RunChannel`` actor (0 CPUs): (handle, name)."""
    name = f"ramp-channel-{uuid.uuid4().hex}"
    # On the driver's own node: left to Ray, a 0-CPU actor may land on any worker node, and losing
    # that node would fail every run talking through it, not only the runs that had workers there.
    # Hard affinity: with soft=True Ray spilled it to a worker node when the driver's node could
    # not start a worker at once (a head with 0 CPUs, two jobs starting; CI 2026-12-04: the other
    # node's job failed with ActorUnavailableError when that worker node was killed).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = (
        ray.remote(num_cpus=0)(RunChannel)
        .options(name=name, namespace=CHANNEL_NAMESPACE, max_restarts=0, scheduling_strategy=here)
        .remote()
    )
    return handle, name


def scaling_config(resources: Resources, *, cpus_per_worker: float | None = None) -> ray.train.ScalingConfig:
    per_worker: dict[str, float] = {"CPU": cpus_per_worker or resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = 1
    return ray.train.ScalingConfig(
        num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker
    )


def check_fits(resources: Resources) -> None:
    """Fail now, with the numbers, rather than wait forever for workers the cluster cannot hold."""
    total = ray.cluster_resources()
    cpus = resources.num_workers * resources.cpus_per_worker
    if cpus > total.get("CPU", 0) + 1e-9:
        raise ValueError(
            f"{resources.num_workers} workers x {resources.cpus_per_worker} CPUs = {cpus} CPUs; "
            f"the Ray cluster has {total.get('CPU', 0)}"
        )
    if resources.use_gpu and resources.num_workers > total.get("GPU", 0):
        raise ValueError(
            f"use_gpu needs {resources.num_workers} GPUs; the Ray cluster has {total.get('GPU', 0)}"
        )


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def absolute_paths(spec: ResolvedSpec) -> ResolvedSpec:
    """The spec with its paths made absolute (workers run in another cwd); still resolved."""
    if spec.init_from is not None and is_unresolved_init(spec.model_dump()):
        raise ValueError(f"init_from {spec.init_from!r} must be resolved to a checkpoint path first")
    paths = {"init_from": _absolute(spec.init_from), "data_root": _absolute(spec.data_root)}
    return spec.model_copy(update=paths)


def forget_ray_run(storage_path: str, name: str = RUN_NAME) -> None:
    """Drop a previous Ray Train run's state, so Train V2 does not restore it into a fresh run."""
    if "://" not in storage_path:
        shutil.rmtree(Path(storage_path) / name, ignore_errors=True)


def build_trainer(
    spec: ResolvedSpec,
    out_dir: Path,
    *,
    resume: bool,
    channel_name: str,
    key: str,
    scaling: ray.train.ScalingConfig,
    storage_path: str,
    max_failures: int = 0,
    fence: AttemptFence | None = None,
    run_name: str = RUN_NAME,
) -> TorchTrainer:
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": absolute_paths(spec), "out_dir": str(out_dir), "resume": resume,
            "channel": channel_name, "key": key, "fence": fence,
        },
        scaling_config=scaling,
        run_config=ray.train.RunConfig(
            storage_path=storage_path,
            name=run_name,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )


class FitThread(threading.Thread):
    """``trainer.fit()`` off the calling thread (which keeps serving events and cancels)."""

    def __init__(self, trainer: TorchTrainer) -> None:
        super().__init__(name="ray-train-fit", daemon=True)
        self.trainer = trainer
        self.result: ray.train.Result | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.trainer.fit()
        except BaseException as e:  # handed to the calling thread
            self.error = e


@dataclass
class PumpOutcome:
    final: dict[str, Any] | None = None
    cancelled: bool = False
    callback_error: BaseException | None = None


def pump_events(
    channel: Any,
    key: str,
    fit: FitThread,
    on_event: Callable[[Event], None],
    *,
    stop_event: threading.Event | None = None,
    poll_s: float = 0.5,
) -> PumpOutcome:
    """Replay the run's events into ``on_event`` until ``fit`` ends; cancel on ``stop_event``.

    A raising ``on_event`` cancels the run; later events are drained but not replayed.
    """
    outcome = PumpOutcome()
    cancel_sent = False

    def cancel_if_asked() -> None:
        nonlocal cancel_sent
        wants_stop = stop_event is not None and stop_event.is_set()
        if (wants_stop or outcome.callback_error is not None) and not cancel_sent:
            ray.get(channel.cancel.remote(key))
            cancel_sent = True

    while True:
        alive = fit.is_alive()
        cancel_if_asked()
        for event in ray.get(channel.take.remote(key)):
            kind, payload = event
            if kind == TRAIN_END:
                outcome.final = payload
            elif kind == CANCELLED:
                outcome.cancelled = True
            if outcome.callback_error is None:
                try:
                    on_event(event)
                except Exception as e:  # re-raised by the caller once the workers have stopped
                    outcome.callback_error = e
            # A callback that asked to stop (or failed) is acted on now, not a poll later: the
            # workers go on training meanwhile.
            cancel_if_asked()
        if not alive:  # the take above ran after fit ended: nothing is left behind
            return outcome
        fit.join(poll_s)


@contextlib.contextmanager
def signals_set(event: threading.Event, enabled: bool = True) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``event`` (main thread only; handlers restored after)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: event.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_train_job(
    spec: ResolvedSpec,
    out_dir: str | Path,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
    resources: Resources | Mapping[str, Any] | None = None,
    stop_event: threading.Event | None = None,
    handle_signals: bool = True,
    storage_path: str | None = None,
    max_failures: int = 0,
    fence: AttemptFence | None = None,
) -> dict[str, Any]:
    """Train ``spec`` on Ray Train workers into ``out_dir``; returns the final metrics.

    ``spec``: a ``ResolvedSpec`` (``TrainSpec.resolve()``). ``resources``: ``{"num_workers",
    "cpus_per_worker", "use_gpu"}`` (default: 1 worker with 1 CPU). ``callbacks`` run in this
    thread, in order.
    ``resume=True`` continues from the newest checkpoint (Ray Train's, else ``out_dir/checkpoint``).
    ``max_failures``: Ray Train restarts of failed workers, from the latest checkpoint.
    ``stop_event`` (or SIGINT/SIGTERM while this runs, with ``handle_signals`` on the main thread)
    stops the run at the workers' next optimiser step. ``fence``: the service job's attempt; rank 0
    refuses to write a checkpoint once a newer attempt was submitted (the run then fails).
    Raises ``TrainingCancelled`` when stopped, ``TrainingFailed`` when a worker failed.
    """
    require_resolved(spec, "run_train_job")
    train_spec = spec
    res = Resources.model_validate(resources if resources is not None else {})
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    check_fits(res)
    storage = storage_path or str(out / "ray")
    # A service job's run is named after it (``ramp-<id>-<method>-train``) in Ray's Train view.
    run_name = current_run_name(RUN_NAME)
    if not resume:
        forget_ray_run(storage, run_name)
    channel, channel_name = open_channel()
    key = "run"
    stop = stop_event or threading.Event()
    cb = CallbackList(list(callbacks))
    try:
        trainer = build_trainer(
            train_spec, out, resume=resume, channel_name=channel_name, key=key,
            scaling=scaling_config(res), storage_path=storage, max_failures=max_failures, fence=fence,
            run_name=run_name,
        )
        with signals_set(stop, enabled=handle_signals):
            fit = FitThread(trainer)
            fit.start()
            outcome = pump_events(channel, key, fit, lambda event: replay_event(cb, event), stop_event=stop)
    finally:
        ray.kill(channel)
    if fit.error is not None:
        raise TrainingFailed(f"Ray Train run in {out} failed: {fit.error}") from fit.error
    if outcome.callback_error is not None:
        raise outcome.callback_error
    if outcome.cancelled:
        raise TrainingCancelled(f"training in {out} was cancelled; its last checkpoint is kept")
    if outcome.final is None:
        raise TrainingFailed(f"Ray Train run in {out} ended without reporting final metrics")
    return outcome.final
