"""The sweep job kind of the driver (workers.jobs.sweep_job) with a stand-in for Ray Tune: what it
reports, what it returns, the best checkpoint link, cancel and total failure. No Ray, no torch."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from workers.contract.jobs import StoredJob
from workers.contract.sweep import SweepSpec, best_trial, parse_sweep_spec
from workers.jobs import sweep_job
from workers.jobs.sweep_job import (
    SweepCancelled,
    SweepFailed,
    relative_to,
    run_sweep_job,
    sweep_kind,
)

SPEC = {
    "kind": "sweep",
    "base": {"method": "ramp", "dataset": "mnist-5k", "epochs": 2, "max_steps": 4, "monitor_n": 8},
    "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}, "lr": {"grid": [0.01, 0.1]}},
}
SWEEP = parse_sweep_spec(SPEC)


class FakeReporter:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, type_: str, data: dict[str, Any]) -> int:
        self.events.append((type_, data))
        return len(self.events) - 1

    def progress(self, step: int, total_steps: int, *, force: bool = False, **extra: Any) -> int:
        return self.emit("progress", {"step": step, "total_steps": total_steps} | extra)

    def log(self, message: str, *, level: str = "info", **extra: Any) -> int:
        return self.emit("log", {"message": message, "level": level})

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == type_]


def fake_runner(unions: dict[int, list[float] | None], *, cancel_after: int | None = None,  # noqa: ANN201
                default_suite_ratio: float = 1.0, best_final_error: str | None = None):
    """A run_sweep stand-in: trial i reports the epochs' union values (None: it fails); each trial's
    final is a monitor evaluation (its last union), and the best trial's default-suite evaluation
    gives ``default_suite_ratio`` times that union (or fails with ``best_final_error``)."""

    def run(spec: SweepSpec, out_dir: Path, *, on_trial_event: Any, stop_event: Any) -> Any:
        rows = []
        for t in spec.trials():
            if cancel_after is not None and t.index >= cancel_after:
                rows.append({"trial_id": t.trial_id, "status": "cancelled", "metrics": [], "final": None,
                             "checkpoint": None, "error": None, "config": t.overrides})
                continue
            base = {"trial_id": t.trial_id, "index": t.index, "config": t.overrides}
            on_trial_event(base | {"type": "trial_start", "status": "running"})
            ckpt = out_dir / "trials" / t.trial_id / "checkpoint"
            values = unions[t.index]
            history = []
            for e, u in enumerate(values or []):
                ckpt.mkdir(parents=True, exist_ok=True)
                (ckpt / "model.safetensors").write_bytes(b"w" * (t.index + 1))
                m = {"epoch": e + 1, "union": u}
                history.append(m)
                on_trial_event(base | {"type": "trial_result", "epoch": e + 1, "metrics": m,
                                       "checkpoint": str(ckpt)})
            ok = values is not None
            final = ({"clean": 0.9, "union": values[-1], "suite": "monitor", "upper_bound": True}
                     if ok else None)
            on_trial_event(base | {"type": "trial_end", "status": "succeeded" if ok else "failed",
                                   "error": None if ok else "worker died", "final": final,
                                   "checkpoint": str(ckpt) if ok else None})
            rows.append({"trial_id": t.trial_id, "index": t.index, "status": "succeeded" if ok else "failed",
                         "metrics": history, "final": final, "checkpoint": str(ckpt) if ok else None,
                         "error": None if ok else "worker died", "config": t.overrides})
        best = best_trial(rows, spec.metric, spec.mode)
        best_row = next((r for r in rows if r["trial_id"] == best), None)
        best_final = None
        if best_row is not None and cancel_after is None and best_final_error is None:
            union = best_row["final"]["union"] * default_suite_ratio
            best_final = {"clean": 0.9, "union": union, "suite": "standard", "upper_bound": False, "n": 16}
        return SimpleNamespace(
            trials=rows, best_trial_id=best,
            best_checkpoint=next((r["checkpoint"] for r in rows if r["trial_id"] == best), None),
            metric=spec.metric, mode=spec.mode, cancelled=cancel_after is not None, seconds=1.5,
            best_final=best_final, best_final_error=best_final_error,
            numbers={"best_final": {"suite": "standard"}},
        )

    return run


def test_trials_are_reported_and_the_best_is_the_result(tmp_path: Path) -> None:
    reporter = FakeReporter()
    runner = fake_runner({0: [0.1, 0.2], 1: [0.6, 0.3], 2: [0.2, 0.45], 3: None})
    result = run_sweep_job(SWEEP, tmp_path, reporter, runner=runner)
    trial_events = reporter.of("trial")
    start = trial_events[0]
    assert start["event"] == "sweep_start" and [t["trial_id"] for t in start["trials"]] == [
        "trial_0000", "trial_0001", "trial_0002", "trial_0003"]
    assert start["trials"][2]["config"] == {"params.ramp.lambda": 5, "lr": 0.01}
    results = [e for e in trial_events if e["event"] == "trial_result"]
    assert len(results) == 6
    assert {e["checkpoint"] for e in results} == {f"trials/trial_000{i}/checkpoint" for i in range(3)}
    ends = {e["trial_id"]: e for e in trial_events if e["event"] == "trial_end"}
    assert ends["trial_0003"]["status"] == "failed" and ends["trial_0003"]["error"] == "worker died"
    assert ends["trial_0000"]["config"] == {"params.ramp.lambda": 0.5, "lr": 0.01}
    # Best by the last epoch: trial_0002 (0.45), not trial_0001 (peak 0.6, last 0.3).
    assert result["best_trial_id"] == "trial_0002" and result["best_score"] == 0.45
    assert result["union"] == 0.45 and result["clean"] == 0.9  # the best trial's final metrics
    assert result["best_checkpoint"] == "trials/trial_0002/checkpoint"
    assert result["trials"] == {"succeeded": 3, "failed": 1} and result["num_trials"] == 4
    assert result["best_config"] == {"params.ramp.lambda": 5, "lr": 0.01}
    best = tmp_path / "checkpoint" / "model.safetensors"
    assert best.read_bytes() == b"www" and not best.is_symlink()
    source = tmp_path / "trials" / "trial_0002" / "checkpoint" / "model.safetensors"
    assert best.stat().st_ino == source.stat().st_ino  # a hard link: no second copy
    progress = reporter.of("progress")
    assert progress[0]["step"] == 0 and progress[-1] == {"step": 4, "total_steps": 4, "phase": "sweep",
                                                          "trials_done": 4, "trials_total": 4}
    assert any(e["level"] == "warning" and "trial_0003 failed" in e["message"] for e in reporter.of("log"))


def test_a_rerun_replaces_the_previous_best_link(tmp_path: Path) -> None:
    first = fake_runner({0: [0.9], 1: [0.1], 2: [0.1], 3: [0.1]})
    run_sweep_job(SWEEP, tmp_path, FakeReporter(), runner=first)
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == b"w"
    second = fake_runner({0: [0.1], 1: [0.1], 2: [0.1], 3: [0.9]})
    run_sweep_job(SWEEP, tmp_path, FakeReporter(), runner=second)
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == b"wwww"


def test_a_cancelled_sweep_raises_and_links_nothing(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "model.safetensors").write_bytes(b"old")  # an earlier attempt's best
    reporter = FakeReporter()
    with pytest.raises(SweepCancelled, match="1 of 4"):
        run_sweep_job(SWEEP, tmp_path, reporter, stop_event=threading.Event(),
                      runner=fake_runner({0: [0.5]}, cancel_after=1))
    assert not (tmp_path / "checkpoint").exists()


def test_a_sweep_where_every_trial_failed_fails_with_the_errors(tmp_path: Path) -> None:
    with pytest.raises(SweepFailed, match="worker died"):
        run_sweep_job(SWEEP, tmp_path, FakeReporter(), runner=fake_runner(dict.fromkeys(range(4))))


def test_invalid_specs_are_refused_before_anything_runs(tmp_path: Path) -> None:
    def never(*a: Any, **k: Any) -> Any:
        raise AssertionError("the runner must not be called")

    with pytest.raises(ValueError, match="unknown field 'lamda'"):
        parse_sweep_spec(SPEC | {"param_space": {"lamda": {"grid": [1]}}})
    with pytest.raises(TypeError, match="takes a SweepSpec"):  # parsed once, by the driver
        run_sweep_job(SPEC, tmp_path, FakeReporter(), runner=never)
    assert not (tmp_path / "checkpoint").exists()


def test_paths_outside_the_job_dir_stay_absolute(tmp_path: Path) -> None:
    assert relative_to(str(tmp_path / "a" / "b"), tmp_path) == "a/b"
    assert relative_to("/elsewhere/ckpt", tmp_path) == "/elsewhere/ckpt"
    assert relative_to(None, tmp_path) is None


def test_the_result_is_the_best_trials_default_suite_and_monitor_numbers_are_labelled(tmp_path: Path) -> None:
    reporter = FakeReporter()
    unions = {0: [0.1, 0.2], 1: [0.6, 0.3], 2: [0.2, 0.45], 3: [0.1, 0.1]}
    runner = fake_runner(unions, default_suite_ratio=0.5)
    result = run_sweep_job(SWEEP, tmp_path, reporter, runner=runner)
    # the job's numbers are the default suite's on the best trial, not its monitor upper bound
    assert result["best_trial_id"] == "trial_0002" and result["best_score"] == 0.45
    assert result["union"] == pytest.approx(0.225) and result["suite"] == "standard"
    assert result["upper_bound"] is False
    assert result["best_monitor"]["union"] == 0.45 and result["best_monitor"]["upper_bound"] is True
    assert result["numbers"] == {"best_final": {"suite": "standard"}}
    # the service hears the best trial's default suite as a second trial_end (its row keeps the
    # latest final), not counted as a fifth finished trial
    ends = [e for e in reporter.of("trial") if e["event"] == "trial_end" and e["trial_id"] == "trial_0002"]
    assert [e["final"]["suite"] for e in ends] == ["monitor", "standard"]
    assert ends[-1]["final"]["union"] == pytest.approx(0.225)
    assert ends[-1]["final"]["monitor"]["union"] == 0.45
    assert ends[-1]["status"] == "succeeded" and ends[-1]["checkpoint"] == "trials/trial_0002/checkpoint"
    assert {e["event"] for e in reporter.of("trial")} == {"sweep_start", "trial_start", "trial_result",
                                                          "trial_end"}
    assert reporter.of("progress")[-1]["trials_done"] == 4
    assert ends[-1]["index"] == 2 and ends[-1]["config"] == {"params.ramp.lambda": 5, "lr": 0.01}
    assert any("the default suite on 16 points: union = 0.225" in e["message"] for e in reporter.of("log"))


def test_a_failed_default_suite_evaluation_fails_the_sweep(tmp_path: Path) -> None:
    error = "the evaluation ran out of memory"
    runner = fake_runner({0: [0.5], 1: [0.1], 2: [0.1], 3: [0.1]}, best_final_error=error)
    with pytest.raises(SweepFailed, match="out of memory"):
        run_sweep_job(SWEEP, tmp_path, FakeReporter(), runner=runner)


def test_the_driver_entry_runs_the_typed_sweep_spec_it_was_handed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = StoredJob.from_stored(dict(SPEC) | {"resources": {"cpus_per_worker": 1}})
    seen: list[Any] = []
    runner = fake_runner({0: [0.1], 1: [0.4], 2: [0.2], 3: [0.3]})

    def spy(spec: Any, out_dir: Path, **kwargs: Any) -> Any:
        seen.append(spec)
        return runner(spec, out_dir, **kwargs)

    monkeypatch.setattr(sweep_job, "_default_runner", lambda: spy)
    ctx = SimpleNamespace(job=job, out_dir=tmp_path, reporter=FakeReporter())
    assert sweep_kind(ctx)["best_trial_id"] == "trial_0001"
    assert seen == [job.work] and seen[0] is job.work  # the driver's one parse, not a re-parse
    with pytest.raises(TypeError, match="SweepSpec"):
        sweep_kind(SimpleNamespace(job=SimpleNamespace(work={"kind": "sweep"}), out_dir=tmp_path,
                                   reporter=FakeReporter()))
