"""The training loop on Ray Train workers: the ``Runtime`` and the worker-side glue.

Every Ray Train worker runs ``train_worker(config)``, which calls the same
``workers.training.loop.run_training`` as a local run, with:

- ``RayTrainRuntime``: the device Ray Train assigned, the worker's rank, a DDP-wrapped model
  (``ray.train.torch.prepare_model``; gloo on CPU, nccl on GPU, chosen by ``TorchTrainer``), each
  rank's share of the data through a ``DistributedSampler`` seeded like the local one (one worker
  sees exactly the local run's batches), epoch sums all-reduced.
- ``ReportBridge``: every epoch, every rank calls ``ray.train.report`` (a collective in Train V2);
  rank 0 attaches the checkpoint the loop has just written, so Ray Train keeps the latest ones.
- ``EventForwarder`` (rank 0): the loop's callback events, sent to the driver through a
  ``RunChannel`` actor, in order; the driver replays them into its own callbacks.
- ``CancelWatch``: a cooperative stop. Every step each rank looks at the channel's cancel flag
  (at most every ``poll_s``) and the ranks agree with an all-reduce, so all of them leave at the
  same step: the worker function returns normally, the controller releases the workers and their
  placement group, and no rank is left waiting in a collective.

Only rank 0 writes into ``out_dir``; the other ranks run in a scratch directory of their own.
Resuming: the newest checkpoint Ray Train holds (``ray.train.get_checkpoint()``) is what every rank
starts from; without one, the run's own ``out_dir/checkpoint``.
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from workers import checkpoint
from workers.contract.spec import ResolvedSpec
from workers.ray_entry.channel import Event
from workers.training.callbacks import AttemptFenceCallback, Callback, EpochReport, TrainInfo
from workers.training.loop import run_training
from workers.training.runtime import Runtime

CHANNEL_NAMESPACE = "ramp"

# Event kinds sent from rank 0 to the driver (see ``EventForwarder`` and ``replay_event``).
TRAIN_START, STEP, CHECKPOINT, EPOCH_END, EVAL_PROGRESS, TRAIN_END, CANCELLED = (
    "train_start", "step", "checkpoint", "epoch_end", "eval_progress", "train_end", "cancelled",
)



class TrainingCancelled(Exception):
    """The run was asked to stop; it stopped at an optimiser step, its last checkpoint intact."""


def _ddp_kwargs() -> dict[str, Any]:
    # Attacks run extra forward passes, not always as many on every rank (E-AT picks a norm per
    # batch); syncing BN buffers inside forward would make those collectives mismatch and hang.
    # Buffers are still synced once at wrap time; rank 0's are the ones saved.
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class RayTrainRuntime(Runtime):
    """``Runtime`` of one Ray Train worker (call inside a Ray Train worker function)."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model.to(self.device)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=_ddp_kwargs())

    def prepare_loader(self, loader: DataLoader, *, shuffle: bool, seed: int) -> DataLoader:
        # The global batch stays the spec's batch_size, so steps per epoch, LR schedule and
        # max_steps mean the same with any number of workers.
        batch = math.ceil(loader.batch_size / self.world_size)
        sampler = DistributedSampler(
            loader.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle, seed=seed,
            drop_last=False,
        )
        shard = len(sampler)
        # A final batch of one sample breaks BatchNorm in train mode; drop only that case (as locally).
        drop_last = shard > batch and shard % batch == 1
        return DataLoader(
            loader.dataset, batch_size=batch, sampler=sampler, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, drop_last=drop_last, pin_memory=self.device.type == "cuda",
            generator=torch.Generator(), persistent_workers=False,
        )

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def epoch_metrics(report: EpochReport) -> dict[str, Any]:
    """An epoch report as flat scalars: what Ray Train and Ray Tune record, and sweeps rank by.

    Monitor metrics keep their names (``union``, ``clean``, ``linf``, ...); loss parts become
    ``loss_<part>`` and training robust accuracies ``train_acc_<norm>``; gradient-projected runs add
    ``grad_cosine``.
    """
    out: dict[str, Any] = {
        "epoch": report.epoch, "epochs": report.epochs, "step": report.step,
        "total_steps": report.total_steps, "lr": report.lr, "seconds": report.seconds,
    }
    out.update({f"loss_{k}": v for k, v in report.losses.items()})
    out.update({f"train_acc_{k}": v for k, v in report.train_robust_acc.items()})
    out.update(report.monitor)
    if report.grad_cosine is not None:
        out["grad_cosine"] = report.grad_cosine
    return out


class ReportBridge(Callback):
    """``ray.train.report`` once per epoch on every rank; rank 0 attaches the checkpoint."""

    def __init__(self) -> None:
        self._checkpoint: str | None = None

    def on_checkpoint(self, path: str) -> None:
        self._checkpoint = path

    def on_epoch_end(self, report: EpochReport) -> None:
        ckpt = ray.train.Checkpoint.from_directory(self._checkpoint) if self._checkpoint else None
        self._checkpoint = None
        ray.train.report(epoch_metrics(report), checkpoint=ckpt)


class EventForwarder(Callback):
    """Rank 0's callback events -> the channel (steps at most every ``step_interval_s``)."""

    def __init__(self, channel: Any, key: str, step_interval_s: float = 1.0) -> None:
        self.channel, self.key, self.step_interval_s = channel, key, step_interval_s
        self._last_step_sent = -math.inf

    def send(self, kind: str, payload: Any, *, wait: bool = False) -> None:
        ref = self.channel.put.remote(self.key, (kind, payload))
        if wait:
            ray.get(ref)

    def on_train_start(self, info: TrainInfo) -> None:
        self.send(TRAIN_START, asdict(info))

    def on_step(self, step: int, total_steps: int) -> None:
        self._throttled(STEP, step, total_steps)

    def on_eval_progress(self, done: int, total: int) -> None:
        self._throttled(EVAL_PROGRESS, done, total)

    def _throttled(self, kind: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last_step_sent >= self.step_interval_s:
            self._last_step_sent = now
            self.send(kind, (done, total))

    def on_checkpoint(self, path: str) -> None:
        self.send(CHECKPOINT, path)

    def on_epoch_end(self, report: EpochReport) -> None:
        self.send(EPOCH_END, report.to_dict())

    def on_train_end(self, metrics: dict[str, Any]) -> None:
        # Waited for: once it returns, every earlier event has arrived too (calls run in order).
        self.send(TRAIN_END, metrics, wait=True)


class CancelWatch(Callback):
    """Raise ``TrainingCancelled`` on every rank at the same point once the run is cancelled.

    Checked when training starts (a run cancelled while its workers were starting never trains)
    and after every optimiser step; the ranks agree by an all-reduce, so none is left behind in
    a collective.
    """

    def __init__(self, channel: Any, key: str, runtime: Runtime, poll_s: float = 0.2) -> None:
        self.channel, self.key, self.runtime, self.poll_s = channel, key, runtime, poll_s
        self._last_poll = -math.inf
        self._seen = False

    def _cancelled(self) -> bool:
        now = time.monotonic()
        if not self._seen and now - self._last_poll >= self.poll_s:
            self._last_poll = now
            self._seen = bool(ray.get(self.channel.is_cancelled.remote(self.key)))
        if self.runtime.world_size == 1:
            return self._seen
        flag = torch.tensor([1.0 if self._seen else 0.0], device=self.runtime.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_start(self, info: TrainInfo) -> None:
        if self._cancelled():
            raise TrainingCancelled("cancelled before the first step")

    def on_step(self, step: int, total_steps: int) -> None:
        if self._cancelled():
            raise TrainingCancelled(f"cancelled after step {step} of {total_steps}")


def replay_event(callback: Callback, event: Event) -> None:
    """Call the driver-side ``callback`` hook that ``event`` stands for."""
    kind, payload = event
    handlers: dict[str, Callable[[Any], None]] = {
        TRAIN_START: lambda p: callback.on_train_start(TrainInfo(**p)),
        STEP: lambda p: callback.on_step(*p),
        CHECKPOINT: callback.on_checkpoint,
        EPOCH_END: lambda p: callback.on_epoch_end(EpochReport.from_dict(p)),
        EVAL_PROGRESS: lambda p: callback.on_eval_progress(*p),
        TRAIN_END: callback.on_train_end,
        CANCELLED: lambda p: None,
    }
    if kind not in handlers:
        raise ValueError(f"unknown training event {kind!r}")
    handlers[kind](payload)


def _copy_checkpoint(source: Path, target: Path) -> None:
    """Replace ``target`` by a copy of ``source`` (via a sibling, so a reader never sees half)."""
    tmp = target.with_name(f".{target.name}.staging")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def stage_resume(work_dir: Path, out_dir: Path, *, is_main: bool) -> str:
    """Put the checkpoint this rank resumes from at ``work_dir/checkpoint``; returns its source.

    Every rank takes Ray Train's latest reported checkpoint when there is one (rank 0's own
    ``out_dir/checkpoint`` may be an epoch ahead if the run died between saving and reporting;
    all ranks must start from the same epoch). Without one, the run's own checkpoint directory.
    """
    target = work_dir / checkpoint.SUBDIR
    reported = ray.train.get_checkpoint()
    if reported is not None:
        with reported.as_directory() as source:
            _copy_checkpoint(Path(source), target)
        return "ray"
    local = out_dir / checkpoint.SUBDIR
    if checkpoint.has_train_state(local):
        if not is_main:
            _copy_checkpoint(local, target)
        return "out_dir"
    return "none"


def train_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: ``run_training`` with the Ray runtime and glue.

    ``config``: ``spec`` (the ``ResolvedSpec`` itself, or its JSON), ``out_dir`` (absolute),
    ``resume``, ``channel`` (the ``RunChannel`` actor's name), ``key`` (this run's key on the
    channel) and optionally ``fence`` (an ``AttemptFence`` rank 0 checks before each checkpoint
    write). With ``resume`` the run continues from the staged checkpoint, if a restart of Ray
    Train's found one (a worker restarted before any checkpoint starts afresh).
    """
    runtime = RayTrainRuntime()
    channel = ray.get_actor(config["channel"], namespace=CHANNEL_NAMESPACE)
    key = config["key"]
    out_dir = Path(config["out_dir"])
    work_dir = out_dir if runtime.is_main else Path(tempfile.mkdtemp(prefix=f"ramp-rank{runtime.rank}-"))
    forwarder = EventForwarder(channel, key) if runtime.is_main else None
    callbacks: list[Callback] = [CancelWatch(channel, key, runtime), ReportBridge()]
    if forwarder is not None:
        callbacks.append(forwarder)
    if config.get("fence") is not None and runtime.is_main:  # only the writing rank saves
        callbacks.insert(0, AttemptFenceCallback(config["fence"]))
    try:
        if runtime.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        resume = bool(config["resume"]) and stage_resume(work_dir, out_dir, is_main=runtime.is_main) != "none"
        spec = config["spec"]
        spec = ResolvedSpec.model_validate(spec)  # the object itself passes as it is
        try:
            run_training(spec, work_dir, callbacks=callbacks, resume=resume, runtime=runtime)
        except TrainingCancelled as e:
            if forwarder is not None:
                forwarder.send(CANCELLED, str(e), wait=True)
    finally:
        if not runtime.is_main:
            shutil.rmtree(work_dir, ignore_errors=True)
