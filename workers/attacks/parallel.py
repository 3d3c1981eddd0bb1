"""Running a per-sample attack on shards of a batch in parallel threads (CPU).

APGD treats every sample on its own (step sizes, restarts and the misclassification record are
per sample; the model is in eval mode), so a batch can be cut into shards that run at the same
time with the same per-sample results. On a CPU that is faster than one batch with intra-op
threads: measured on this project's 2-core machine, a small CNN's forward + input backward at
batch 224 cost 157-162 us per image with 2 intra-op threads and 118-132 us with two shards in two
threads of one intra-op thread each. On a GPU a single batch is better, so callers pass
``workers=1`` there (``default_workers``).

Only the attack's deterministic part runs sharded: random starts are drawn for the whole batch
before (so results do not depend on thread timing). While the shards run, torch's intra-op thread
count is 1 (it is process-wide) and it is restored afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from workers.attacks.result import AttackResult

MIN_SHARD = 8  # below this a shard's fixed per-iteration cost outweighs the parallelism

_thread_count_lock = threading.Lock()


def default_workers(device: torch.device) -> int:
    """Threads to shard an attack over: the intra-op thread count on a CPU, 1 elsewhere."""
    return max(torch.get_num_threads(), 1) if device.type == "cpu" else 1


def shards(n: int, workers: int) -> list[slice]:
    """Contiguous, near-equal slices covering range(n); one slice when sharding would not pay."""
    count = max(1, min(workers, n // MIN_SHARD))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(count)]


def sharded(run: Callable[[slice], AttackResult], n: int, workers: int) -> AttackResult:
    """``run(s)`` on each shard ``s`` of a batch of ``n`` samples, concatenated in batch order."""
    parts = shards(n, workers)
    if len(parts) == 1:
        return run(parts[0])
    results: list[AttackResult | None] = [None] * len(parts)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = run(parts[i])
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    with _thread_count_lock:
        threads_before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pool = [threading.Thread(target=work, args=(i,), name=f"attack-shard-{i}")
                    for i in range(len(parts))]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
        finally:
            torch.set_num_threads(threads_before)
    if errors:
        raise errors[0]
    done = [r for r in results if r is not None]
    return AttackResult(
        x_adv=torch.cat([r.x_adv for r in done]),
        loss=torch.cat([r.loss for r in done]),
        robust=torch.cat([r.robust for r in done]) if all(r.robust is not None for r in done) else None,
        x_fooled=torch.cat([r.x_fooled for r in done]) if all(r.x_fooled is not None for r in done) else None,
    )
