"""The paths a stored job spec names, and their re-check where they are opened. Torch-free.

The service stores every path a user gave in its canonical form (``..`` and symlinks resolved:
``service.jobs.paths``) after checking it lies under the data roots -- for a sweep, the base, each
trial and the values of its ``param_space`` alike. Between submission and the moment a driver
opens the path, a symlink along it can be re-pointed (``/data/mine -> /data/theirs`` becomes
``/data/mine -> /etc``). So the driver checks again before anything opens them
(``recheck_paths``): each path must still resolve to itself, and lie under one of the roots the
service handed it (its data roots and its own storage, where the checkpoints it resolved from job
ids live). What is left is the instant between this check and the open.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

# Spec fields holding paths a driver opens (``pair_models`` holds more, one per norm).
PATH_FIELDS = ("data_root", "data_file", "checkpoint", "init_from")
# Sweep domains whose values are listed in the spec (the random ones draw numbers).
LISTED_DOMAINS = ("grid", "choice")


class PathMoved(ValueError):
    """A stored path that no longer is the one checked at submission; ``field`` says which."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__(f"{field}: {reason}")


def canonical(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _single(spec: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, str]]:
    for key in PATH_FIELDS:
        if isinstance(spec.get(key), str):
            yield prefix + key, spec[key]
    pairs = spec.get("pair_models")
    if isinstance(pairs, Mapping):
        for norm, value in pairs.items():
            if isinstance(value, str):
                yield f"{prefix}pair_models.{norm}", value


def spec_paths(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, path) of every path a stored spec names: its own, a sweep's base's, and the listed
    values of a sweep's path-valued ``param_space`` keys."""
    found = list(_single(spec, ""))
    if isinstance(spec.get("base"), Mapping):
        found += _single(spec["base"], "base.")
    space = spec.get("param_space")
    if isinstance(space, Mapping):
        for key, domain in space.items():
            if key not in PATH_FIELDS or not isinstance(domain, Mapping):
                continue
            for kind in LISTED_DOMAINS:
                for value in domain.get(kind) or ():
                    if isinstance(value, str):
                        found.append((f"param_space.{key}", value))
    return found


def recheck_paths(spec: Mapping[str, Any], roots: Sequence[str] | None) -> None:
    """``PathMoved`` unless every path of ``spec`` still resolves to itself and lies under one of
    ``roots`` (canonical; None: the service did not say, check the resolution only)."""
    for field, path in spec_paths(spec):
        real = canonical(path)
        if real != path:
            raise PathMoved(field, f"{path!r} now resolves to {real!r}, not to the path checked when the job "
                                   "was submitted (a symlink along it changed); refusing to open it")
        if roots is not None and not any(_inside(real, root) for root in roots):
            raise PathMoved(field, f"{path!r} is outside the service's data roots; refusing to open it")
