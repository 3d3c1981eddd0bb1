"""The training loop: any registered method, one optimiser, a per-step LR schedule, checkpoints.

``run_training(spec, out_dir)`` writes into ``out_dir``:

    checkpoint/      the latest checkpoint (``workers.checkpoint`` layout), rewritten every epoch,
                     with ``train_state.pt`` so ``resume=True`` continues exactly where it stopped
    history.jsonl    one ``EpochReport`` per line
    metrics.json     the final evaluation (the default suite on ``spec.eval_n`` test points, with the
                     rigour checks on ``spec.checks_n`` of them; the keys ``rampctl eval`` writes),
                     plus per_sample.npz from the evaluation

Per epoch, ``spec.monitor_n`` held-out points are checked with the ``monitor`` suite: a cheap
curve that over-states robustness (an upper bound, labelled so wherever it is shown).

Reproducibility: everything is seeded from ``spec.seed``; the data order depends only on
(seed, epoch) (see ``runtime``); held-out monitoring runs with isolated RNG so turning it on or off
does not change training; a checkpoint stores the RNG states. A run resumed after epoch k therefore
ends with the same weights as an uninterrupted run.

Distributed runs: the ``Runtime`` prepares model and loader and sums epoch statistics over ranks;
only ``runtime.is_main`` evaluates and writes. Method hooks receive the unwrapped model.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from workers import checkpoint
from workers.contract import catalog
from workers.contract.metrics import ACCURACY_KEYS
from workers.contract.spec import ResolvedSpec, TrainSpec, require_resolved
from workers.datasets import load_dataset, load_tensors, num_classes
from workers.evaluation import evaluate
from workers.methods import Method, MethodContext, build_method
from workers.models import build_from_metadata
from workers.models.compiled import eager, fast_model
from workers.training.accumulate import EpochStats
from workers.training.artifacts import write_history, write_metrics
from workers.training.callbacks import Callback, CallbackList, EpochReport, TrainInfo
from workers.training.evaluation import evaluate_and_record
from workers.training.optim import build_optimizer, set_lr
from workers.training.rng import isolated_rng, seed_everything
from workers.training.runtime import LocalRuntime, Runtime
from workers.training.schedules import lr_at, radius_scale
from workers.training.state import Progress, pack_train_state, restore_train_state

# Spec fields that may change between a run and its resumption: they do not affect the weights.
RESUME_MUTABLE = frozenset({"eval_n", "checks_n", "precision", "monitor_n", "monitor_steps", "num_workers",
                            "data_root"})


class ResumeError(ValueError):
    """The checkpoint in ``out_dir`` belongs to a different run than the spec being resumed."""


@dataclass(frozen=True)
class StepPlan:
    steps_per_epoch: int
    total_steps: int  # optimiser steps of the whole run, after the max_steps cap
    epochs: int  # epochs that run (the last one may be cut short by max_steps)


def plan_steps(epochs: int, steps_per_epoch: int, max_steps: int | None) -> StepPlan:
    if steps_per_epoch < 1:
        raise ValueError("the training set yields no batch (fewer points than one batch?)")
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    return StepPlan(steps_per_epoch, total, math.ceil(total / steps_per_epoch))


def _train_subset(spec: ResolvedSpec) -> Dataset:
    data = load_dataset(spec.dataset, "train", root=spec.data_root, augment=True)
    if spec.train_n is not None and spec.train_n < len(data):
        data = Subset(data, range(spec.train_n))
    return data


def _loader(data: Dataset, spec: ResolvedSpec, runtime: Runtime) -> DataLoader:
    # A final batch of one sample breaks BatchNorm in train mode; drop only that case.
    drop_last = len(data) > spec.batch_size and len(data) % spec.batch_size == 1
    plain = DataLoader(data, batch_size=spec.batch_size, num_workers=spec.num_workers, drop_last=drop_last)
    return runtime.prepare_loader(plain, shuffle=True, seed=spec.seed)


def _model_meta(spec: ResolvedSpec) -> dict[str, Any]:
    channels, height, width = catalog.DATASETS[spec.dataset].shape
    return {
        "model": spec.model,
        "model_args": dict(spec.model_args),
        "dataset": spec.dataset,
        "num_classes": num_classes(spec.dataset, root=spec.data_root),
        "in_channels": channels,
        "input_size": [height, width],
        "epsilons": dict(spec.epsilons),
        "method": spec.method,
        "spec": spec.model_dump(mode="json"),
    }


def _build_model(meta: dict[str, Any], init_from: str | None) -> nn.Module:
    try:
        model = build_from_metadata(meta)
    except TypeError as e:  # build_model's way of rejecting model_args
        raise ValueError(str(e)) from None
    if init_from is not None:
        source_meta = checkpoint.load_metadata(init_from)
        for key in ("model", "model_args", "num_classes", "in_channels", "input_size"):
            if source_meta[key] != meta[key]:
                raise checkpoint.CheckpointError(
                    f"cannot fine-tune from {init_from}: its {key} is {source_meta[key]!r}, this run's is "
                    f"{meta[key]!r} (leave the model unset to take the checkpoint's)"
                )
        checkpoint.load_weights(model, init_from)
    return model


def _check_resumable(stored: dict[str, Any], current: dict[str, Any], out_dir: Path) -> None:
    # A field added after the checkpoint was written counts as its default (what that run did).
    defaults = {name: f.default for name, f in TrainSpec.model_fields.items() if name not in stored
                and not f.is_required() and f.default_factory is None}
    stored = defaults | stored
    differ = sorted(k for k in stored.keys() | current.keys()
                    if k not in RESUME_MUTABLE and stored.get(k) != current.get(k))
    if differ:
        details = "; ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise ResumeError(f"cannot resume {out_dir}: the spec differs from the checkpoint's ({details})")


def _monitor(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], spec: ResolvedSpec,
             device: torch.device) -> dict[str, float]:
    # Isolated so that monitoring (or not) never changes the training's random streams.
    with isolated_rng():
        metrics = evaluate(model, data, spec.epsilons, "monitor", n=None, device=device, seed=spec.seed,
                           steps=spec.monitor_steps, precision=spec.precision).metrics()
    return {k: metrics[k] for k in ACCURACY_KEYS if metrics.get(k) is not None}


def _train_epoch(
    epoch: int, progress: Progress, plan: StepPlan, *, spec: ResolvedSpec, model: nn.Module, bare: nn.Module,
    method: Method, optimizer: torch.optim.Optimizer, loader: DataLoader, runtime: Runtime, cb: Callback,
) -> tuple[EpochStats, float]:
    stats = EpochStats(runtime.device)
    runtime.set_epoch(loader, epoch)
    method.on_epoch_start(bare, epoch)
    lr = 0.0
    for x, y in loader:
        x = x.to(runtime.device, non_blocking=True)
        y = y.to(runtime.device, non_blocking=True)
        lr = lr_at(spec.schedule, spec.lr, progress.step, plan.total_steps)
        set_lr(optimizer, lr)
        method.set_radius_scale(radius_scale(spec.eps_warmup, progress.step, plan.total_steps))
        model.train()
        out = method.compute_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        method.after_step(bare, x, y, lr)
        stats.add(out)
        progress.step += 1
        cb.on_step(progress.step, plan.total_steps)
        if progress.step >= plan.total_steps:
            break
    method.on_epoch_end(bare, epoch)
    return stats, lr


def run_training(
    spec: ResolvedSpec,
    out_dir: str | os.PathLike[str],
    *,
    callbacks: tuple[Callback, ...] | list[Callback] = (),
    resume: bool = False,
    device: torch.device | str | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Train ``spec`` into ``out_dir``; returns the final metrics (empty on non-main ranks).

    ``resume=True`` continues from the training state in ``out_dir/checkpoint`` (a ``ResumeError``
    when there is none: whoever asks to resume -- the service for a retried job, the CLI for
    ``--resume`` -- has looked). ``device`` picks the
    device of the default ``LocalRuntime``; pass ``runtime`` to run elsewhere (e.g. Ray Train).
    """
    out = Path(out_dir)
    runtime = runtime or LocalRuntime(device)
    cb = CallbackList(list(callbacks))
    require_resolved(spec, "run_training")
    spec_dict = spec.model_dump(mode="json")
    ckpt_dir = out / checkpoint.SUBDIR

    seed_everything(spec.seed)
    meta = _model_meta(spec)
    loader = _loader(_train_subset(spec), spec, runtime)
    plan = plan_steps(spec.epochs, len(loader), spec.max_steps)
    bare = _build_model(meta, spec.init_from).to(runtime.device)
    model = runtime.prepare_model(fast_model(bare, channels_last=spec.channels_last, compile=spec.compile))
    # Checkpoints, hooks and evaluations get the eager module, never the compiled wrapper.
    bare = eager(runtime.unwrap(model))
    method = build_method(
        spec.method,
        MethodContext(
            epsilons=dict(spec.epsilons), params=dict(spec.params), num_classes=meta["num_classes"],
            finetune=spec.finetune, momentum=spec.momentum, weight_decay=spec.weight_decay,
            seed=spec.seed, train_precision=spec.train_precision, total_steps=plan.total_steps,
        ),
    )
    optimizer = build_optimizer(bare, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                                name=spec.optimizer)
    monitor_data = None
    if runtime.is_main and spec.monitor_n > 0:
        monitor_data = load_tensors(spec.dataset, "test", n=spec.monitor_n, root=spec.data_root)

    progress = Progress()
    if resume:
        if not checkpoint.has_train_state(ckpt_dir):
            raise ResumeError(f"cannot resume {out}: {ckpt_dir} holds no training state (nothing ran yet)")
        state = checkpoint.load_train_state(ckpt_dir)
        _check_resumable(state["spec"], spec_dict, out)
        checkpoint.load_weights(bare, ckpt_dir)
        # Last: building the model and the method consumed random numbers the saved state replaces.
        progress = restore_train_state(
            state, optimizer=optimizer, method=method, loader_generator=loader.generator
        )

    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
    cb.on_train_start(TrainInfo(
        spec=spec_dict, out_dir=str(out), device=str(runtime.device), epochs=plan.epochs,
        steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps,
        start_epoch=progress.epoch, start_step=progress.step, is_main=runtime.is_main,
    ))

    for epoch in range(progress.epoch, plan.epochs):
        started = time.perf_counter()
        stats, lr = _train_epoch(
            epoch, progress, plan, spec=spec, model=model, bare=bare, method=method,
            optimizer=optimizer, loader=loader, runtime=runtime, cb=cb,
        )
        losses, robust = stats.summary(runtime.reduce_sum)
        seconds = time.perf_counter() - started
        monitor = _monitor(bare, monitor_data, spec, runtime.device) if monitor_data is not None else {}
        gradients = method.epoch_metrics()
        report = EpochReport(
            epoch=epoch + 1, epochs=plan.epochs, step=progress.step, total_steps=plan.total_steps,
            lr=lr, losses=losses, train_robust_acc=robust, seconds=seconds, monitor=monitor,
            grad_cosine=gradients.get("grad_cosine"), grad_angle_deg=gradients.get("grad_angle_deg"),
        )
        progress.history.append(report.to_dict())
        progress.epoch = epoch + 1
        if runtime.is_main:
            train_state = pack_train_state(
                progress, optimizer=optimizer, method=method, loader_generator=loader.generator,
                spec=spec_dict,
            )
            cb.before_checkpoint(str(ckpt_dir))
            checkpoint.save(
                ckpt_dir, bare, meta | {"epoch": progress.epoch, "step": progress.step, "metrics": monitor},
                train_state=train_state,
            )
            write_history(out, progress.history)
            cb.on_checkpoint(str(ckpt_dir))
        cb.on_epoch_end(report)

    final: dict[str, Any] = {}
    if runtime.is_main:
        final = _final_metrics(bare, spec, runtime.device, out, ckpt_dir, cb)
    cb.on_train_end(final)
    return final


def _final_metrics(
    model: nn.Module, spec: ResolvedSpec, device: torch.device, out: Path, ckpt_dir: Path, cb: Callback
) -> dict[str, Any]:
    extra = {"checkpoint": str(ckpt_dir), "data": f"{spec.dataset}:test"}
    if spec.eval_n > 0:
        data = load_tensors(spec.dataset, "test", n=spec.eval_n, root=spec.data_root)
        with isolated_rng():
            metrics = evaluate_and_record(model, data, spec.epsilons, out, device=device, seed=spec.seed,
                                          precision=spec.precision, checks=spec.checks_n,
                                          progress=cb.on_eval_progress, extra=extra)
    else:
        metrics = {"n": 0, "suite": catalog.DEFAULT_SUITE, "epsilons": dict(spec.epsilons)} | extra
        write_metrics(out, metrics)
    if (ckpt_dir / checkpoint.META_FILE).is_file():
        checkpoint.update_metadata(ckpt_dir, {"metrics": metrics})
    return metrics
