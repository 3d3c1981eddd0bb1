"""Evaluating a saved checkpoint (``rampctl eval``, eval jobs) and the training run's final check.

Both write the same ``metrics.json``: ``workers.evaluation.EvalResult.metrics()`` (clean, linf,
l2, l1, union as fractions, n, epsilons, suite, ...) plus ``checkpoint`` and ``data`` (what was
evaluated), so a training run's metrics and a later re-evaluation compare key for key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from workers import checkpoint
from workers.contract import catalog
from workers.contract.spec import EvalSpec
from workers.datasets import load_npz, load_tensors
from workers.evaluation import evaluate
from workers.evaluation.evaluate import Progress
from workers.models.compiled import fast_model
from workers.training.runtime import default_device


def check_points_fit(x: Tensor, y: Tensor, meta: dict[str, Any], source: str) -> None:
    """User points must match the checkpoint's input shape and label range (clear error otherwise)."""
    height, width = _size(meta["input_size"])
    expected = (meta["in_channels"], height, width)
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{source}: points have shape (C, H, W) = {tuple(x.shape[1:])}, the checkpoint's model "
            f"takes {expected}"
        )
    if int(y.max()) >= meta["num_classes"]:
        raise ValueError(f"{source}: label {int(y.max())} out of range for {meta['num_classes']} classes")


def _size(input_size: int | list[int]) -> tuple[int, int]:
    return (input_size, input_size) if isinstance(input_size, int) else (input_size[0], input_size[1])


def default_epsilons(dataset: str) -> dict[str, float]:
    if dataset not in catalog.DATASETS:
        raise ValueError(f"dataset {dataset!r} is not in the catalog; give the radii explicitly")
    return dict(catalog.DATASETS[dataset].epsilons)


def evaluate_and_record(
    model: nn.Module, data: tuple[Tensor, Tensor], epsilons: dict[str, float], out_dir: Path, *,
    suite: str | list[str] = catalog.DEFAULT_SUITE, n: int | None = None, batch_size: int = 256,
    device: torch.device | str | None = None, seed: int = 0, steps: int | None = None,
    precision: str = "auto", checks: int = 0, corruptions: bool = False, progress: Progress | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``evaluate``, then ``metrics.json`` (with ``extra``) and the per-sample flags into ``out_dir``,
    each written once."""
    result = evaluate(
        model, data, epsilons, suite, n=n, batch_size=batch_size, device=device, seed=seed, steps=steps,
        precision=precision, checks=checks, corruptions=corruptions, progress=progress,
    )
    result.save(out_dir, extra)
    return result.metrics() | (extra or {})


def run_evaluation(
    spec: EvalSpec, out_dir: str | os.PathLike[str], *, device: torch.device | str | None = None,
    data_root: str | os.PathLike[str] | None = None, progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate the checkpoint of ``spec`` on its dataset's test split (or ``spec.data_file``).

    Radii default to the checkpoint's dataset's (catalog) and ``spec.epsilons`` overrides them.
    Writes ``out_dir/metrics.json`` and ``out_dir/per_sample.npz``; returns the metrics.
    """
    dev = torch.device(device) if device is not None else default_device()
    ckpt_dir = checkpoint.resolve_dir(spec.checkpoint)
    model, meta = checkpoint.load(ckpt_dir, device=dev)
    fast_model(model, channels_last=spec.channels_last)  # in place; the attacks' inputs follow
    epsilons = default_epsilons(meta["dataset"]) | spec.epsilons
    if spec.data_file is not None:
        x, y = load_npz(spec.data_file)
        check_points_fit(x, y, meta, spec.data_file)
        label = str(spec.data_file)
    else:
        root = data_root if data_root is not None else meta.get("spec", {}).get("data_root")
        x, y = load_tensors(meta["dataset"], "test", n=spec.n, root=root)
        label = f"{meta['dataset']}:test"
    out = Path(out_dir)
    return evaluate_and_record(
        model, (x, y), epsilons, out, suite=spec.suite, n=spec.n, batch_size=spec.batch_size, device=dev,
        seed=spec.seed, precision=spec.precision, checks=spec.checks_n, corruptions=spec.corruptions,
        progress=progress, extra={"checkpoint": str(ckpt_dir), "data": label, "dataset": meta["dataset"]},
    )
