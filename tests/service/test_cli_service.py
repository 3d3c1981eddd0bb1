"""``rampctl`` service commands against a live API (no Ray: jobs are moved by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from exec_support import tiny_train_spec
from typer.testing import CliRunner

from rampctl.main import app
from service.auth import tokens
from service.events import store as events
from service.jobs import store, transitions
from workers.contract.samples import per_sample_block
from workers.contract.stats import mcnemar_exact

runner = CliRunner()


@pytest.fixture
def cli(live_server: Any) -> Any:
    env = {"RAMP_URL": live_server.url, "RAMP_TOKEN": live_server.token, "COLUMNS": "200"}

    def invoke(*args: str, input: str | None = None) -> Any:  # noqa: A002
        return runner.invoke(app, list(args), env=env, input=input)

    invoke.server = live_server  # type: ignore[attr-defined]
    return invoke


def _sessions(server: Any) -> Any:
    return server.app.state.session_factory


def _finish(server: Any, job_id: int, metrics: dict[str, Any]) -> None:
    with _sessions(server)() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="test")
        transitions.transition(s, job_id, "running")
        events.add_events(s, job_id, [
            {"seq": 0, "type": "progress",
             "data": {"step": 3, "total_steps": 6, "fraction": 0.5, "phase": "train"}},
            {"seq": 1, "type": "metrics", "data": {"epoch": 1, "epochs": 2, "losses": {"ce": 1.25}}},
            {"seq": 2, "type": "log", "data": {"message": "careful now", "level": "warning"}},
        ])
        transitions.transition(s, job_id, "succeeded", result=metrics)


def test_submit_with_flags_and_a_spec_file(cli: Any, tmp_path: Path) -> None:
    r = cli("submit", "--method", "eat", "--epochs", "2", "--eps", "linf=0.25", "--channels-last",
            "--param", "eat.norms=linf,l2", "--max-retries", "1", "-q")
    assert r.exit_code == 0, r.output
    job_id = int(r.output.strip().splitlines()[-1])
    with _sessions(cli.server)() as s:
        spec = store.get_job(s, job_id).spec
    assert (spec["method"], spec["epochs"], spec["max_retries"], spec["channels_last"]) == ("eat", 2, 1, True)
    assert spec["epsilons"]["linf"] == 0.25
    assert spec["params"]["eat.norms"] == "linf,l2" and spec["epsilons"]["l2"] == 2.0  # default filled in

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_train_spec(seed=3)))
    r = cli("submit", str(spec_file), "--seed", "7")
    assert r.exit_code == 0 and "submitted job" in r.output
    with _sessions(cli.server)() as s:
        jobs, _ = store.list_jobs(s)
    assert jobs[0].spec["seed"] == 7 and jobs[0].spec["train_n"] == 64

    r = cli("submit", "-", "--kind", "train", "-q", input=json.dumps({"method": "ramp", "epochs": 1}))
    assert r.exit_code == 0 and r.output.strip().isdigit()


def test_errors_are_one_line_without_traceback(cli: Any, tmp_path: Path) -> None:
    r = cli("submit", "--method", "nope")
    assert r.exit_code == 1
    assert "HTTP 422" in r.output and "method" in r.output and "Traceback" not in r.output
    r = cli("submit", "--epochs", "0")
    assert r.exit_code == 1 and "epochs" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    r = cli("submit", str(bad))
    assert r.exit_code == 2 and "not valid JSON" in r.output
    r = cli("status", "999")
    assert r.exit_code == 1 and "HTTP 404" in r.output
    r = runner.invoke(app, ["jobs"], env={"RAMP_URL": "http://127.0.0.1:9", "RAMP_TOKEN": "x"})
    assert r.exit_code == 1 and "cannot reach the service" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["jobs"], env={"RAMP_URL": cli.server.url, "RAMP_TOKEN": "wrong"})
    assert r.exit_code == 1 and "HTTP 401" in r.output and "token create" in r.output


def test_jobs_status_cancel_retry(cli: Any) -> None:
    job_id = int(cli("submit", "--epochs", "1", "-q").output.strip())
    r = cli("jobs")
    assert r.exit_code == 0 and str(job_id) in r.output and "queued" in r.output
    r = cli("status", str(job_id))
    assert r.exit_code == 0 and f"job {job_id}" in r.output and "queued" in r.output
    r = cli("cancel", str(job_id))
    assert r.exit_code == 0 and "cancelled" in r.output
    r = cli("cancel", str(job_id))
    assert r.exit_code == 1 and "HTTP 409" in r.output
    r = cli("retry", str(job_id))
    assert r.exit_code == 0 and "queued (attempt 2)" in r.output
    r = cli("jobs", "--status", "cancelled")
    assert r.exit_code == 0 and str(job_id) not in r.output.split("\n", 3)[-1]


def test_results_side_by_side_and_follow(cli: Any) -> None:
    a = int(cli("submit", "--method", "ramp", "--epochs", "1", "-q").output.strip())
    b = int(cli("submit", "--method", "eat", "--epochs", "1", "-q").output.strip())
    _finish(cli.server, a, {"clean": 0.9, "linf": 0.5, "l2": 0.6, "l1": 0.4, "union": 0.3125, "n": 16})
    _finish(cli.server, b, {"clean": 0.8, "linf": 0.45, "l2": 0.5, "l1": 0.35, "union": 0.25, "n": 16})
    c = int(cli("submit", "--method", "max", "--epochs", "1", "-q").output.strip())
    r = cli("results", str(a), str(b), str(c))
    assert r.exit_code == 0, r.output
    assert f"#{a} ramp" in r.output and f"#{b} eat" in r.output and f"#{c} max (queued)" in r.output
    assert "31.2%" in r.output and "25.0%" in r.output and "no metrics yet" in r.output

    assert "note: #" in r.output and "no per-sample flags, so no paired test" in r.output

    r = cli("status", str(a), "--follow")
    assert r.exit_code == 0, r.output
    assert "epoch 1/2: ce=1.25" in r.output and "careful now" in r.output
    assert "running -> succeeded" in r.output and "31.2%" in r.output


def test_results_of_jobs_on_the_same_points_print_the_paired_test(cli: Any) -> None:
    # 100 shared points: RAMP alone right on 20 of them, E-AT alone right on 8.
    ramp_union = [True] * 45 + [False] * 55
    eat_union = [True] * 25 + [False] * 20 + [True] * 8 + [False] * 47
    jobs = []
    for method, union in (("ramp", ramp_union), ("eat", eat_union)):
        job = int(cli("submit", "--method", method, "--epochs", "1", "-q").output.strip())
        flags = {"clean": [True] * 100, "union": union}
        _finish(cli.server, job, {"clean": 1.0, "union": sum(union) / 100, "n": 100, "suite": "standard",
                                  "precision": "fp32", "per_sample": per_sample_block("points", flags),
                                  "data": "mnist-5k:test"})
        jobs.append(job)
    r = cli("results", *map(str, jobs))
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "45.0% [35.6, 54.8]" in text and "33.0% [24.6, 42.7]" in text
    pair = (f"#{jobs[0]} ramp vs #{jobs[1]} eat, union: +12.0 points "
            "(20 vs 8 points only one got right, n = 100)")
    assert pair in text
    assert f"p = {mcnemar_exact(20, 8):.2g} (significant" in text and "p = 0.036" in text
    # both on mnist-5k with `standard`: the weak-suite warning, once for both runs, not once per run
    assert text.count("the 'standard' suite over-states") == 1
    assert "all 2 runs: warning: on mnist-5k the 'standard' suite over-states" in text


def test_token_create_and_db_upgrade(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "RAMP_HOME": str(tmp_path)}
    r = runner.invoke(app, ["db", "upgrade"], env=env)
    assert r.exit_code == 0 and "upgraded" in r.output
    r = runner.invoke(app, ["token", "create", "alice"], env=env)
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    assert token.startswith("ramp_") and " " not in token
    from service.db.session import make_engine, make_session_factory

    engine = make_engine(env["DATABASE_URL"])
    with make_session_factory(engine)() as s:
        row = tokens.authenticate_token(s, token)
        assert row is not None and row.name == "alice" and not row.is_admin
    engine.dispose()
    for url in ("postgresql+psycopg2://nobody@127.0.0.1:9/x", "nosuchdb://x"):
        r = runner.invoke(app, ["db", "upgrade"], env={"DATABASE_URL": url})
        assert r.exit_code == 1 and "database error" in r.output and "Traceback" not in r.output
