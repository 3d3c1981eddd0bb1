"""Which server paths a job spec may name: only under the operator's data roots.

A spec's ``data_root``, ``data_file``, ``checkpoint``, ``init_from`` and ``pair_models`` paths are
opened by drivers with the service's rights, so an unconfined path would let a user read (or,
through CIFAR-10's pickle batches, run) whatever lies on the workers' file systems. Paths are
canonicalised (``..`` and symlinks resolved) and must fall under one of ``RAMP_DATA_ROOTS``.
Another job's files are named by job id, never by path -- that keeps tenancy to the one check the
job-id resolution makes -- so a path into the service's own storage is refused even when it exists.

Nothing here touches the file system beyond ``realpath``: whether a path exists is not said (a
refusal reads the same for existing and missing files, so errors cannot be used to probe).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Spec fields holding paths the driver opens.
PATH_FIELDS = ("data_root", "data_file", "checkpoint", "init_from")


class PathRefused(ValueError):
    """A spec path outside the allowed roots; ``field`` is where it was given."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__(reason)


def canonical(path: str) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class PathPolicy:
    roots: tuple[Path, ...]
    storage: Path

    @classmethod
    def of(cls, roots: Iterable[Path], storage: Path) -> PathPolicy:
        return cls(tuple(canonical(str(r)) for r in roots), canonical(str(storage)))

    def confine(self, value: str, field: str) -> str:
        """The canonical form of ``value`` when it lies under a data root; else PathRefused."""
        if "\x00" in value:
            raise PathRefused(field, "a path must not contain NUL characters")
        if not os.path.isabs(os.path.expanduser(value)):
            raise PathRefused(field, f"give an absolute path under the data roots ({self._roots_text()})")
        path = canonical(value)
        if _inside(path, self.storage):
            raise PathRefused(
                field,
                "paths into the service's storage are not accepted: name another job's checkpoint "
                'by its id ({"job_id": N}, and "trial" for a sweep\'s trial)',
            )
        if not any(_inside(path, root) for root in self.roots):
            raise PathRefused(field, f"{value!r} is outside the allowed data roots ({self._roots_text()})")
        return str(path)

    def _roots_text(self) -> str:
        return ", ".join(str(r) for r in self.roots) + "; set by the operator in RAMP_DATA_ROOTS"


def _request_field(prefix: str, key: str, norm: str | None = None) -> str:
    # Where the user wrote the path (the stored spec flattens {"checkpoint": ...} objects).
    if norm is not None:
        return f"{prefix}.pair_models.{norm}.checkpoint"
    if key == "init_from":
        return f"{prefix}.init_from.checkpoint"
    return f"{prefix}.{key}"


def _slots(spec: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, str | None]]:
    """(container, key, norm) of every path a stored-form spec names (``pair_models`` included)."""
    for key in PATH_FIELDS:
        if isinstance(spec.get(key), str):
            yield spec, key, None
    pairs = spec.get("pair_models")
    if isinstance(pairs, dict):
        for norm, value in pairs.items():
            if isinstance(value, str):
                yield pairs, norm, norm


def confine_spec(
    spec: dict[str, Any], policy: PathPolicy, *, trusted: frozenset[str] = frozenset(),
    prefix: str = "body", swept: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """Replace every path in ``spec`` by its canonical form in place; returns (field, reason) for
    each refused one. ``trusted``: paths the service resolved from job ids (its own storage).
    ``swept``: keys whose value came from a sweep's param_space (reported there)."""
    errors: list[tuple[str, str]] = []
    for container, key, norm in _slots(spec):
        value = container[key]
        if value in trusted:
            continue
        top = "pair_models" if norm is not None else key
        field = f"body.param_space.{top}" if top in swept else _request_field(prefix, key, norm)
        try:
            container[key] = policy.confine(value, field)
        except PathRefused as exc:
            errors.append((exc.field, str(exc)))
    return errors


def confine_submission(
    spec: dict[str, Any], trial_rows: list[dict[str, Any]] | None, policy: PathPolicy,
    trusted: frozenset[str],
) -> list[tuple[str, str]]:
    """Confine a job's stored spec -- a sweep's base and every trial's spec -- in place; returns
    the refused paths, each once, as (field, reason)."""
    if trial_rows is None:
        return confine_spec(spec, policy, trusted=trusted)
    errors = confine_spec(spec["base"], policy, trusted=trusted, prefix="body.base")
    for row in trial_rows:
        errors += confine_spec(row["spec"], policy, trusted=trusted, prefix="body.base",
                               swept=frozenset(row["config"]))
    return list(dict.fromkeys(errors))
