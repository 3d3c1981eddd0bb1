"""Checkpoints: a directory that rebuilds a model without unpickling anything.

Layout of a checkpoint directory::

    model.safetensors   the model's state_dict (parameters and buffers), safetensors format
    meta.json           how to rebuild and interpret it: format_version, model, model_args, dataset,
                        num_classes, in_channels, input_size, epsilons, method, spec (the resolved
                        TrainSpec), metrics, epoch, step
    train_state.pt      optional, only for resuming: optimiser, step counter, method state, RNG
                        states, epoch, history. Read with ``torch.load(weights_only=True)``, which
                        refuses arbitrary pickled objects.

API:
- ``save(path, model, metadata, *, train_state=None) -> Path`` writes the directory atomically
  (a sibling temporary directory swapped in), so a crash mid-save leaves the previous checkpoint.
- ``load(path, device=None) -> (model, metadata)``: the model rebuilt through
  ``workers.models.build_model`` from ``meta.json``, weights loaded strictly, in eval mode.
- ``load_weights(model, path)`` (into an existing model), ``load_metadata(path)``,
  ``load_train_state(path)``, ``has_train_state(path)``, ``update_metadata(path, updates)``.

``path`` may also be a training output directory holding the checkpoint in ``checkpoint/`` (what
``run_training`` writes), so ``rampctl eval --checkpoint RUN_DIR`` works. Every failure to read a
checkpoint raises ``CheckpointError`` with the path and the reason.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from workers.contract.layout import CHECKPOINT_DIR, META_FILE, TRAIN_STATE_FILE, WEIGHTS_FILE

FORMAT_VERSION = 1
SUBDIR = CHECKPOINT_DIR  # where run_training puts the checkpoint inside its output directory
REQUIRED_KEYS = ("model", "model_args", "dataset", "num_classes", "in_channels", "input_size")


class CheckpointError(Exception):
    """A checkpoint directory is missing, incomplete or corrupt (the message says which and why)."""


def resolve_dir(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory for ``path`` (itself, or its ``checkpoint/`` subdirectory)."""
    p = Path(path)
    if (p / META_FILE).is_file():
        return p
    if (p / SUBDIR / META_FILE).is_file():
        return p / SUBDIR
    if not p.exists():
        raise CheckpointError(f"checkpoint {p}: no such directory")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p}: not a directory")
    raise CheckpointError(f"checkpoint {p}: no {META_FILE} (not a checkpoint directory)")


def save(
    path: str | os.PathLike[str],
    model: nn.Module,
    metadata: dict[str, Any],
    *,
    train_state: dict[str, Any] | None = None,
) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {', '.join(missing)}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        meta = {"format_version": FORMAT_VERSION, **metadata}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def load_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    ckpt = resolve_dir(path)
    try:
        meta = json.loads((ckpt / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: unreadable {META_FILE} ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {ckpt}: {META_FILE} is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {ckpt}: format version {version!r}, expected {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt}: {META_FILE} lacks {', '.join(missing)}")
    return meta


def load(path: str | os.PathLike[str], device: torch.device | str | None = None) -> tuple[nn.Module, dict]:
    # Imported here: reading metadata or training state must not pull in the model registry.
    from workers.contract.registry import UnknownNameError
    from workers.models import build_from_metadata

    ckpt = resolve_dir(path)
    meta = load_metadata(ckpt)
    if not (ckpt / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"checkpoint {ckpt}: missing {WEIGHTS_FILE}")
    # Building a model draws initial weights; keep that from shifting the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        try:
            model = build_from_metadata(meta)
        except (UnknownNameError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {ckpt}: cannot rebuild model {meta['model']!r} ({e})"
            ) from None
    load_weights(model, ckpt)
    if device is not None:
        model = model.to(torch.device(device))
    return model.eval(), meta


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the checkpoint's weights into ``model`` in place (strict: names and shapes must match)."""
    ckpt = resolve_dir(path)
    weights = ckpt / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {ckpt}: missing {WEIGHTS_FILE}")
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: bad {WEIGHTS_FILE} ({_shorten(str(e))})") from None
    return model


def has_train_state(path: str | os.PathLike[str]) -> bool:
    try:
        return (resolve_dir(path) / TRAIN_STATE_FILE).is_file()
    except CheckpointError:
        return False


def load_train_state(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict:
    ckpt = resolve_dir(path)
    file = ckpt / TRAIN_STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"checkpoint {ckpt}: no {TRAIN_STATE_FILE} (not resumable)")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(str(e))
        if "global" in detail.lower():
            raise CheckpointError(
                f"checkpoint {ckpt}: refusing {TRAIN_STATE_FILE}: it holds objects other than tensors "
                f"and plain values ({detail})"
            ) from None
        raise CheckpointError(f"checkpoint {ckpt}: corrupt {TRAIN_STATE_FILE} ({detail})") from None
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: corrupt {TRAIN_STATE_FILE} ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {ckpt}: {TRAIN_STATE_FILE} is not a dict")
    return state


def _shorten(message: str, limit: int = 300) -> str:
    """torch lists every missing key; the start says enough."""
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[:limit] + " ..."


def _unpickler_detail(message: str) -> str:
    """The useful sentence of torch's long weights-only error (e.g. 'Unsupported global: ...')."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n|$)", message, re.DOTALL)
    return match.group(1).strip() if match else message.strip().splitlines()[0]


def update_metadata(path: str | os.PathLike[str], updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into ``meta.json`` (atomic replace); returns the new metadata."""
    ckpt = resolve_dir(path)
    meta = load_metadata(ckpt) | updates
    tmp = ckpt / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, ckpt / META_FILE)
    return meta
