"""A sweep trial's training run, in the trial's own actor (``LocalRun``: one worker, the training
loop in a thread) or on Ray Train workers (``TrainRun``: a ``TorchTrainer``). Both hand the trial
the same events (checkpoint, epoch end, then ``TRAIN_END`` with the trial's own evaluation, or
``CANCELLED``) and stop the same way: a cancel flag on the sweep's ``RunChannel`` actor, polled at
every optimiser step.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from workers.contract.spec import ResolvedSpec, Resources
from workers.ray_entry.runtime import CANCELLED, CHECKPOINT, EPOCH_END, TRAIN_END, Event, TrainingCancelled
from workers.ray_entry.sweep.evaluation import evaluate_trial, evaluate_trial_task, run_task
from workers.ray_entry.sweep.resources import IN_TRIAL, RAY_TRAIN
from workers.ray_entry.train import FitThread, build_trainer, forget_ray_run, scaling_config
from workers.training.callbacks import Callback, EpochReport, TrainInfo
from workers.training.loop import run_training
from workers.training.runtime import LocalRuntime

STOP_TIMEOUT_S = 600.0  # a cooperative stop takes one optimiser step; this bounds a hung worker
CANCEL_POLL_S = 0.2  # how often an in-trial run asks the channel whether the sweep was cancelled


class StopWatch(Callback):
    """Raises ``TrainingCancelled`` at the next optimiser step once ``stop`` is set or ``poll()``
    (asked at most every ``poll_s``) says so; checked before the first step too."""

    def __init__(
        self, stop: threading.Event, poll: Callable[[], bool], poll_s: float = CANCEL_POLL_S
    ) -> None:
        self.stop, self.poll, self.poll_s = stop, poll, poll_s
        self._last_poll = -float("inf")

    def _check(self, where: str) -> None:
        now = time.monotonic()
        if not self.stop.is_set() and now - self._last_poll >= self.poll_s:
            self._last_poll = now
            if self.poll():
                self.stop.set()
        if self.stop.is_set():
            raise TrainingCancelled(f"cancelled {where}")

    def on_train_start(self, info: TrainInfo) -> None:
        self._check("before the first step")

    def on_step(self, step: int, total_steps: int) -> None:
        self._check(f"after step {step} of {total_steps}")


class Collector(Callback):
    """The loop's checkpoint and epoch events, in the form a Ray Train run sends them."""

    def __init__(self, events: deque[Event]) -> None:
        self.events = events

    def on_checkpoint(self, path: str) -> None:
        self.events.append((CHECKPOINT, path))

    def on_epoch_end(self, report: EpochReport) -> None:
        self.events.append((EPOCH_END, report.to_dict()))


class _ThreadedRun:
    """A trial's run, driven from a thread of the trial's actor (``_thread``): started, watched and
    waited on by ``TrainTrial`` alike whichever way it trains."""

    runner: str
    _thread: threading.Thread

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


class LocalRun(_ThreadedRun):
    """The training loop in a thread of the trial's own actor (one worker, no Ray Train).

    Events (checkpoint, epoch end, then ``TRAIN_END`` with the trial's evaluation, or
    ``CANCELLED``) collect in memory; ``take()`` hands them over in order.
    """

    runner = IN_TRIAL

    def __init__(
        self, spec: ResolvedSpec, out_dir: Path, *, device: torch.device | str,
        poll_cancel: Callable[[], bool] = lambda: False,
    ) -> None:
        self.spec, self.out_dir, self.device = spec, out_dir, device
        self.error: BaseException | None = None
        self._events: deque[Event] = deque()  # appends and pops are atomic across threads
        self._stop = threading.Event()
        self._watch = StopWatch(self._stop, poll_cancel)
        self._thread = threading.Thread(target=self._run, name="in-trial-training", daemon=True)

    def _run(self) -> None:
        try:
            # The loop's own final evaluation (the default suite) is the best trial's alone.
            run_training(self.spec.model_copy(update={"eval_n": 0}), self.out_dir,
                         callbacks=[self._watch, Collector(self._events)],
                         runtime=LocalRuntime(self.device))
            self._events.append((TRAIN_END, evaluate_trial(self.spec, self.out_dir, device=self.device)))
        except TrainingCancelled as e:
            self._events.append((CANCELLED, str(e)))
        except BaseException as e:  # handed to the trial's thread
            self.error = e

    def take(self) -> list[Event]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)

    def describe_error(self) -> str:
        if self.error is None:
            return ""
        return "".join(traceback.format_exception(self.error)).strip()


class TrainRun(_ThreadedRun):
    """A TorchTrainer run (several workers); its events come through the sweep's channel.

    Its workers run the loop with the default-suite evaluation switched off; when the run's
    ``TRAIN_END`` arrives, the trial's own evaluation replaces its payload. It runs as a Ray task on
    one worker's resources (its GPU too), which the run's workers release as they finish: this
    trial still holds its concurrency slot, so no other trial can take them first.
    """

    runner = RAY_TRAIN

    def __init__(self, spec: ResolvedSpec, out_dir: Path, *, channel: Any, channel_name: str, key: str,
                 resources: Resources, cpus_per_worker: float) -> None:
        self.spec, self.out_dir = spec, out_dir
        self._channel, self._key = channel, key
        self._eval_resources = {"num_cpus": cpus_per_worker, "num_gpus": 1.0 if resources.use_gpu else 0.0}
        storage = str(out_dir / "ray")
        forget_ray_run(storage)
        trainer = build_trainer(
            spec.model_copy(update={"eval_n": 0}), out_dir, resume=False, channel_name=channel_name,
            key=key, storage_path=storage, scaling=scaling_config(resources, cpus_per_worker=cpus_per_worker),
        )
        self._thread = FitThread(trainer)  # ``trainer.fit()``: waits on the Ray Train workers

    @property
    def error(self) -> BaseException | None:
        return self._thread.error

    def take(self) -> list[Event]:
        events = ray.get(self._channel.take.remote(self._key))
        return [(TRAIN_END, self._evaluate()) if kind == TRAIN_END else (kind, payload)
                for kind, payload in events]

    def _evaluate(self) -> dict[str, Any]:
        return run_task(evaluate_trial_task, self._eval_resources, self.spec, str(self.out_dir))

    def stop(self) -> None:
        if self._thread.is_alive():
            ray.get(self._channel.cancel.remote(self._key))
            self._thread.join(STOP_TIMEOUT_S)

    def describe_error(self) -> str:
        return "" if self._thread.error is None else str(self._thread.error)


def cancel_flag(channel: Any, key: str) -> Callable[[], bool]:
    """Whether run ``key`` was cancelled: the sweep's cancel (``recorder.CancelStopper``) and a trial's
    ``cleanup`` both raise the channel's flag."""
    return lambda: bool(ray.get(channel.is_cancelled.remote(key)))
