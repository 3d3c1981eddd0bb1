"""A trainer of a superseded attempt stops instead of writing the job's checkpoint
(``workers.contract.attempts.AttemptFence`` through ``AttemptFenceCallback``), and the per-attempt
token file is created once, privately, and shared by concurrent issuers."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from workers.contract.attempts import (
    AttemptFence,
    AttemptSuperseded,
    issue_token_file,
    read_attempt_marker,
    write_attempt_marker,
)
from workers.training.callbacks import AttemptFenceCallback, Callback

TINY = dict(method="nt", dataset="mnist-5k", model="small-cnn", train_n=64, batch_size=32, epochs=3,
            monitor_n=0, eval_n=0, checks_n=0, seed=1)


class SupersedeAfterFirstCheckpoint(Callback):
    """A newer attempt is submitted while this one trains its second epoch."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_checkpoint(self, path: str) -> None:
        write_attempt_marker(self.marker, 2)


def test_a_superseded_trainer_stops_before_overwriting_the_checkpoint(tmp_path: Path) -> None:
    from workers import checkpoint
    from workers.contract.spec import TrainSpec
    from workers.training.loop import run_training

    marker = tmp_path / "job" / ".attempt"
    write_attempt_marker(marker, 1)
    fence = AttemptFence(str(marker), 1)
    out = tmp_path / "job"
    with pytest.raises(AttemptSuperseded, match="superseded by attempt 2"):
        run_training(TrainSpec(**TINY).resolve(), out, device="cpu",
                     callbacks=[SupersedeAfterFirstCheckpoint(marker), AttemptFenceCallback(fence)])
    # Epoch 1's checkpoint is the last one written: the newer attempt resumes from it untouched.
    assert checkpoint.load_train_state(out)["epoch"] == 1


def test_a_trainer_of_a_superseded_attempt_does_not_start(tmp_path: Path) -> None:
    from workers.contract.spec import TrainSpec
    from workers.training.loop import run_training

    marker = tmp_path / "job" / ".attempt"
    write_attempt_marker(marker, 3)
    with pytest.raises(AttemptSuperseded):
        run_training(TrainSpec(**TINY).resolve(), tmp_path / "job", device="cpu",
                     callbacks=[AttemptFenceCallback(AttemptFence(str(marker), 2))])
    assert not (tmp_path / "job" / "checkpoint").exists()


def test_the_fence_passes_the_current_attempt_and_a_missing_marker(tmp_path: Path) -> None:
    marker = tmp_path / ".attempt"
    AttemptFence(str(marker), 1).check()  # no marker: a run outside the service
    write_attempt_marker(marker, 2)
    AttemptFence(str(marker), 2).check()
    AttemptFence(str(marker), 3).check()  # a newer attempt than the marker is never fenced
    assert read_attempt_marker(marker) == 2


def test_a_token_file_is_private_and_issued_once(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "jobs" / "7" / "ramp-7-a1-x.token"
    made: list[str] = []
    barrier = threading.Barrier(8)

    def make() -> str:
        token = f"rampjob_{len(made)}"
        made.append(token)
        return token

    results: list[str] = []

    def issue() -> None:
        barrier.wait()
        results.append(issue_token_file(path, make))

    threads = [threading.Thread(target=issue) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1, "concurrent issuers agree on one token"
    assert path.read_text().strip() == results[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert issue_token_file(path, make) == results[0]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
