"""Which server paths a job spec may name: only under the operator's data roots.

A spec's ``data_root``, ``data_file``, ``checkpoint``, ``init_from`` and ``pair_models`` paths are
opened by drivers with the service's rights, so an unconfined path would let a user read (or,
through CIFAR-10's pickle batches, run) whatever lies on the workers' file systems. Paths are
canonicalised (``..`` and symlinks resolved) and must fall under one of ``RAMP_DATA_ROOTS``.
Another job's files are named by job id, never by path -- that keeps tenancy to the one check the
job-id resolution makes -- so a path into the service's own storage is refused even when it exists.

Nothing here touches the file system beyond ``realpath``: whether a path exists is not said (a
refusal reads the same for existing and missing files, so errors cannot be used to probe).

What is stored is the canonical form -- for a sweep also the path values of its ``param_space``,
from which its runner expands the trials -- and the job driver re-checks it before opening
anything (``workers.contract.paths.recheck_paths``): a symlink re-pointed after submission does not
take a run outside the roots.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.contract.paths import LISTED_DOMAINS, PATH_FIELDS  # the fields a driver opens


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
            # Stored canonical as well: the driver re-checks that every path resolves to itself.
            container[key] = str(canonical(value))
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
    """Confine a job's stored spec -- a sweep's base, the path values of its ``param_space`` and
    every trial's spec and config -- in place; returns the refused paths, each once, as (field,
    reason). A sweep's runner expands its trials from the stored ``param_space``, so that is
    stored resolved too, exactly as the trials it lists: what was checked is what runs."""
    if trial_rows is None:
        return confine_spec(spec, policy, trusted=trusted)
    errors = confine_spec(spec["base"], policy, trusted=trusted, prefix="body.base")
    resolved = _confine_space(spec.get("param_space") or {}, policy, errors)
    for row in trial_rows:
        errors += confine_spec(row["spec"], policy, trusted=trusted, prefix="body.base",
                               swept=frozenset(row["config"]))
        for key, value in row["config"].items():
            if isinstance(value, str) and (key, value) in resolved:
                row["config"][key] = resolved[(key, value)]
    return list(dict.fromkeys(errors))


def _confine_space(space: dict[str, Any], policy: PathPolicy,
                   errors: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Each listed value of a path-valued ``param_space`` key replaced by its canonical form, in
    place; returns (key, as given) -> as stored."""
    resolved: dict[tuple[str, str], str] = {}
    for key, domain in space.items():
        if key not in PATH_FIELDS or not isinstance(domain, dict):
            continue
        for kind in LISTED_DOMAINS:
            values = domain.get(kind)
            if not isinstance(values, list):
                continue
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    continue
                try:
                    values[i] = resolved[(key, value)] = policy.confine(value, f"body.param_space.{key}")
                except PathRefused as exc:
                    errors.append((exc.field, str(exc)))
    return resolved
