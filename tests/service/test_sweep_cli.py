"""``rampctl sweep`` / ``rampctl trials`` and scripts/curl/sweep.sh against a live API (no Ray: the
trials are reported by hand, as a sweep driver would)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from rampctl import sweep_cmds, tables
from service.events import store as event_store
from service.jobs import store, transitions

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "curl"
BASE = {"method": "ramp", "dataset": "mnist-5k", "epochs": 1, "max_steps": 4, "monitor_n": 16, "eval_n": 16,
        "checks_n": 0}
SWEEP = {"kind": "sweep", "base": BASE,
         "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}, "epsilons.l1": {"grid": [8, 12]}}}
UNIONS = {"trial_0000": 0.10, "trial_0001": 0.20, "trial_0002": 0.40, "trial_0003": 0.30}

app = typer.Typer()
sweep_cmds.register(app)
runner = CliRunner()


@pytest.fixture
def cli(live_server: Any) -> Any:
    env = {"RAMP_URL": live_server.url, "RAMP_TOKEN": live_server.token, "COLUMNS": "200"}

    def invoke(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env)

    invoke.server = live_server  # type: ignore[attr-defined]
    return invoke


def finish_sweep(server: Any, job_id: int, unions: dict[str, float]) -> None:
    """Report every trial's final evaluation and the sweep's verdict, as the driver would."""
    events = []
    for tid, union in unions.items():
        events += [
            {"event": "trial_start", "trial_id": tid},
            {"event": "trial_result", "trial_id": tid, "epoch": 1,
             "metrics": {"epoch": 1, "union": union, "clean": 0.9}, "checkpoint": f"trials/{tid}/checkpoint"},
            {"event": "trial_end", "trial_id": tid, "status": "succeeded",
             "final": {"clean": 0.9, "linf": 0.7, "l2": 0.6, "l1": 0.5, "union": union}},
        ]
    best = max(unions, key=lambda t: unions[t])
    with server.app.state.session_factory() as s:
        transitions.claim_queued_jobs(s, limit=10, claimer="test")
        transitions.transition(s, job_id, "running")
        batch = [{"seq": i, "type": "trial", "data": e} for i, e in enumerate(events)]
        event_store.add_events(s, job_id, batch)
        transitions.transition(s, job_id, "succeeded", result={
            "union": unions[best], "best_trial_id": best, "best_checkpoint": f"trials/{best}/checkpoint"})


def test_sweep_submits_a_json_or_yaml_file(cli: Any, tmp_path: Path) -> None:
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({k: v for k, v in SWEEP.items() if k != "kind"}))  # kind defaults to sweep
    r = cli("sweep", str(spec), "-q")
    assert r.exit_code == 0, r.output
    job_id = int(r.output.strip().splitlines()[-1])
    with cli.server.app.state.session_factory() as s:
        job = store.get_job(s, job_id)
    assert job.kind == "sweep" and job.spec["num_trials"] == 4
    yaml_spec = tmp_path / "sweep.yaml"
    yaml_spec.write_text("kind: sweep\nbase: {method: ramp, epochs: 1, monitor_n: 8}\n"
                         "param_space:\n  lr: {grid: [0.01, 0.1]}\nnum_samples: 2\n")
    r = cli("sweep", str(yaml_spec))
    assert r.exit_code == 0, r.output
    assert "(4 trials, queued)" in r.output


def test_sweep_errors_are_one_line(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(SWEEP | {"param_space": {"params.ramp.lambda": {"grid": [-2]}}}))
    r = cli("sweep", str(bad))
    assert r.exit_code == 1 and "HTTP 422" in r.output and "must be >= 0" in r.output
    assert "Traceback" not in r.output
    train = tmp_path / "train.json"
    train.write_text(json.dumps(BASE | {"kind": "train"}))
    r = cli("sweep", str(train))
    assert r.exit_code == 2 and "rampctl submit" in r.output
    r = cli("sweep", str(tmp_path / "missing.json"))
    assert r.exit_code == 2 and "cannot read" in r.output


def test_trials_prints_the_table_the_best_and_the_union_grid(cli: Any, tmp_path: Path) -> None:
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps(SWEEP))
    r = cli("sweep", str(spec), "-q")
    job_id = int(r.output.strip().splitlines()[-1])
    finish_sweep(cli.server, job_id, UNIONS)
    r = cli("trials", str(job_id))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    header = next(line for line in lines if "ramp.lambda" in line and "eps_l1" in line and "union" in line)
    assert "status" in header
    assert any("trial_0002 *" in line and "40.0%" in line for line in lines)  # the best, starred
    assert sum("*" in line for line in lines if "trial_" in line) == 1
    grid_at = next(i for i, line in enumerate(lines) if "ramp.lambda x eps_l1" in line)
    title = " ".join(" ".join(lines[grid_at - 1:grid_at + 1]).split())  # rich wraps a long title
    assert "union accuracy, monitor suite (an upper bound): ramp.lambda x eps_l1" in title
    grid = lines[grid_at:]
    row_05 = next(line for line in grid if line.strip("│┃ ").startswith("0.5 "))
    row_5 = next(line for line in grid if line.strip("│┃ ").startswith("5 "))
    # Rows: lambda 0.5, 5; columns: eps_l1 8, 12 (trial order: the first key varies slowest).
    assert row_05.index("10.0%") < row_05.index("20.0%")
    assert row_5.index("40.0%") < row_5.index("30.0%")
    assert f'"init_from": {{"job_id": {job_id}, "trial": "trial_0002"}}' in r.output
    assert "trials/trial_0002/checkpoint" in r.output


def test_trials_refuses_a_job_that_is_not_a_sweep(cli: Any) -> None:
    with cli.server.app.state.session_factory() as s:
        job = store.create_job(s, {"kind": "train", "method": "ramp"}, kind="train",
                                    idempotency_key=None, token_id=None)
    r = cli("trials", str(job.id))
    assert r.exit_code == 2 and "not a sweep" in r.output


def test_the_union_grid_averages_samples_and_skips_other_shapes() -> None:
    spec = {"param_space": {"a": {"grid": [1, 2]}, "b": {"grid": ["x"]}}}
    monitor = {"suite": "monitor", "upper_bound": True}
    listing = {"trials": [
        {"trial_id": "t0", "config": {"a": 1, "b": "x"}, "final": monitor | {"union": 0.2}},
        {"trial_id": "t1", "config": {"a": 1.0, "b": "x"}, "final": monitor | {"union": 0.4}},  # 1.0 is 1
        {"trial_id": "t2", "config": {"a": 2, "b": "x"}, "metrics": [{"union": 0.9}, {"union": 0.5}]},
    ], "best_trial_id": "t2"}
    table = tables.union_grid(listing, spec)
    assert table is not None
    cells = [list(col.cells) for col in table.columns]
    assert cells == [["1", "2"], ["30.0%", "50.0% *"]]  # the last epoch's check; the best starred
    assert tables.union_grid(listing, {"param_space": {"a": {"grid": [1]}}}) is None
    mixed = {"param_space": {"a": {"grid": [1]}, "b": {"uniform": [0, 1]}}}
    assert tables.union_grid(listing, mixed) is None
    assert tables.config_header("params.gp.beta") == "gp.beta"
    assert tables.config_header("epsilons.linf") == "eps_linf" and tables.config_header("lr") == "lr"


def test_the_curl_script_submits_a_sweep(live_server: Any, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RAMP_URL": live_server.url,
           "RAMP_TOKEN": live_server.token}

    def run(*args: str) -> Any:
        return subprocess.run(["bash", str(SCRIPTS / "sweep.sh"), *args], env=env, capture_output=True,
                              text=True, timeout=60)

    r = run()  # the built-in 2x2 demo grid
    assert r.returncode == 0, r.stderr
    demo = json.loads(r.stdout)
    assert demo["kind"] == "sweep" and demo["spec"]["num_trials"] == 4
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps(SWEEP))
    first = json.loads(run(str(spec), "sweep-key").stdout)
    assert json.loads(run(str(spec), "sweep-key").stdout)["id"] == first["id"]  # idempotent
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(SWEEP | {"metric": "nope"}))
    r = run(str(bad))
    assert r.returncode == 22 and json.loads(r.stdout)["detail"][0]["field"] == "body.metric"
