"""The embedded Ray head and the Jobs API backend.

Fast part: the process-tracking that lets ``stop()`` kill exactly its own processes (a fake process
tree with a grandchild in its own session, like Ray's job drivers; an unrelated process survives).
Slow part (one real head for the module, token auth on): the service runtime starts the head, the
backend submits / watches / stops / reads logs of real Ray jobs, and stopping leaves no process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from exec_support import make_test_settings, short_tmpdir, wait_for

from service.db import migrate
from service.db.session import make_engine, make_session_factory
from service.ray_backend import RayJobExists
from service.ray_local import (
    RECORD_FILE,
    LocalRayHead,
    RayHeadError,
    check_auth_mode,
    kill_session,
    read_proc,
    reap_stale_head,
    session_processes,
)
from service.runtime import (
    RuntimeConfigError,
    ServiceRuntime,
    embedded_tmpdir,
    external_auth_token,
    jobs_api_address,
)

# ------------------------------------------------------------------------- process tracking (fast)

TREE = r"""
import subprocess, sys, time
child = subprocess.Popen(["sleep", "120"])
escaped = subprocess.Popen(["sleep", "121"], start_new_session=True)   # like a Ray job driver
print(child.pid, escaped.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    return read_proc(pid) is not None


@pytest.fixture
def fake_head() -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    root = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert root.stdout is not None
    pids = [root.pid, *map(int, root.stdout.readline().split())]
    yield root, pids
    for pid in pids:  # in case the test failed before killing
        if _alive(pid):
            os.kill(pid, 9)
    root.wait(timeout=10)


def test_kill_session_kills_the_tree_and_nothing_else(
    fake_head: tuple[subprocess.Popen[str], list[int]]
) -> None:
    root, pids = fake_head
    bystander = subprocess.Popen(["sleep", "122"])  # another process of ours, not of the head
    try:
        tracked = session_processes(root.pid)
        assert set(pids) <= set(tracked)
        assert bystander.pid not in tracked
        assert read_proc(pids[2]).sid != root.pid  # the escaped one is found through its parent
        kill_session(root.pid, grace_s=1.0)
        root.wait(timeout=10)
        assert [p for p in pids if _alive(p)] == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_stale_head_is_reaped_only_when_the_record_matches(
    fake_head: tuple[subprocess.Popen[str], list[int]], tmp_path: Path
) -> None:
    root, pids = fake_head
    ticks = read_proc(root.pid).start_ticks
    (tmp_path / RECORD_FILE).write_text(json.dumps({"pid": root.pid, "start_ticks": ticks + 1}))
    assert reap_stale_head(tmp_path) is False  # same pid, other process: not ours to kill
    assert all(_alive(p) for p in pids)
    (tmp_path / RECORD_FILE).write_text(json.dumps({"pid": root.pid, "start_ticks": ticks}))
    assert reap_stale_head(tmp_path) is True
    root.wait(timeout=10)
    assert [p for p in pids if _alive(p)] == []
    assert not (tmp_path / RECORD_FILE).exists()


def test_settings_errors_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="disabled, token"):
        check_auth_mode("on")
    with pytest.raises(RayHeadError, match="at most"):
        LocalRayHead(tmp_dir=tmp_path / ("x" * 60))
    # A too-long configured temp dir is replaced by a short, stable one.
    settings = make_test_settings(tmp_path, ray_tmpdir=tmp_path / ("y" * 80))
    short = embedded_tmpdir(settings)
    assert len(str(short)) < 45 and short == embedded_tmpdir(settings)


def test_the_head_start_up_timeout_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def start(head: LocalRayHead) -> str:
        seen.append(head.startup_timeout_s)
        raise RayHeadError("not starting a head in this test")

    monkeypatch.setattr(LocalRayHead, "start", start)
    for settings, expected in ((make_test_settings(tmp_path), 90.0),
                               (make_test_settings(tmp_path, ray_start_timeout_s=321.0), 321.0)):
        with pytest.raises(RayHeadError):
            ServiceRuntime(settings, None)._connect()  # type: ignore[arg-type]
        assert seen.pop() == expected
    with pytest.raises(ValueError, match="ray_start_timeout_s"):
        make_test_settings(tmp_path, ray_start_timeout_s=0)


def test_external_cluster_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gcs = make_test_settings(tmp_path, ray_address="ray-head:6379")
    with pytest.raises(RuntimeConfigError, match="http://ray-head:8265"):
        jobs_api_address(gcs)
    assert jobs_api_address(make_test_settings(tmp_path, ray_address="http://h:8265")) == "http://h:8265"
    token_mode = make_test_settings(tmp_path, ray_address="http://h:8265", ray_auth_mode="token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert external_auth_token(token_mode) == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "tok").write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert external_auth_token(token_mode) == "from-file"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(RuntimeConfigError, match="no Ray token"):
        external_auth_token(token_mode)
    assert external_auth_token(make_test_settings(tmp_path, ray_address="http://h:8265")) is None


# ------------------------------------------------------------------------ a real head (slow)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceRuntime]:
    """The service's embedded mode: RAY_ADDRESS unset, token auth, a free dashboard port."""
    home = tmp_path_factory.mktemp("home")
    ray_tmp = short_tmpdir("rampray-")
    settings = make_test_settings(
        home, ray_tmpdir=ray_tmp, ray_dashboard_url="http://127.0.0.1:0", ray_auth_mode="token",
        ray_num_cpus=2, dispatch_interval_s=0.2,
    )
    migrate.upgrade(str(settings.database_url))
    engine = make_engine(str(settings.database_url))
    rt = ServiceRuntime(settings, make_session_factory(engine))
    try:
        rt.start()
        yield rt
    finally:
        rt.stop()
        engine.dispose()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_the_embedded_head_requires_its_token(runtime: ServiceRuntime) -> None:
    url = runtime.settings.ray_dashboard_url
    assert url and not url.endswith(":0")
    assert runtime.head is not None and runtime.head.auth_token
    assert httpx.get(f"{url}/api/jobs/", timeout=5).status_code == 401
    auth = {"Authorization": f"Bearer {runtime.head.auth_token}"}
    ok = httpx.get(f"{url}/api/jobs/", headers=auth, timeout=5)
    assert ok.status_code == 200
    assert runtime.backend is not None and runtime.backend.ping() is True


@pytest.mark.slow
def test_the_head_names_its_own_dashboard_to_what_runs_on_it(runtime: ServiceRuntime) -> None:
    # Ray Train's state-API callers find this cluster, not another Ray on the machine.
    assert runtime.head is not None and runtime.head.pid is not None
    environ = dict(line.split("=", 1) for line in
                   Path(f"/proc/{runtime.head.pid}/environ").read_text().split("\0") if "=" in line)
    assert environ["RAY_API_SERVER_ADDRESS"] == runtime.settings.ray_dashboard_url
    assert int(environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]) >= 600


@pytest.mark.slow
def test_backend_submits_watches_stops_and_reads_logs(runtime: ServiceRuntime) -> None:
    backend = runtime.backend
    assert backend is not None
    py = sys.executable
    ok = backend.submit(f"{py} -c \"import os; print('hello', os.environ['RAMP_X'])\"", "t-ok",
                        env_vars={"RAMP_X": "42"})
    assert ok == "t-ok"
    wait_for(lambda: backend.status(ok) == "SUCCEEDED", 300, "the job to succeed")
    assert "hello 42" in backend.logs(ok)

    bad = backend.submit(f"{py} -c \"import sys; print('about to fail'); sys.exit(3)\"", "t-bad")
    wait_for(lambda: backend.status(bad) == "FAILED", 300, "the job to fail")
    info = backend.info(bad)
    assert info is not None and "exit code 3" in info.message and "about to fail" in info.message

    slow = backend.submit(f"{py} -c \"import time; time.sleep(300)\"", "t-slow")
    wait_for(lambda: backend.status(slow) == "RUNNING", 300, "the job to run")
    started = time.monotonic()
    assert backend.stop(slow) is True
    wait_for(lambda: backend.status(slow) == "STOPPED", 300, "the job to stop")
    assert time.monotonic() - started < 15
    assert backend.stop(slow) is False  # already finished

    assert backend.status("no-such-job") is None
    assert backend.logs("no-such-job") is None
    assert backend.stop("no-such-job") is False
    with pytest.raises(RayJobExists):
        backend.submit("true", "t-ok")


@pytest.mark.slow
def test_stopping_the_runtime_leaves_no_ray_process(runtime: ServiceRuntime) -> None:
    """Last test of the module: stop the head while a job driver runs in its own session."""
    backend, head = runtime.backend, runtime.head
    assert backend is not None and head is not None
    job = backend.submit(f"{sys.executable} -c \"import time; time.sleep(301)\"", "t-left-running")
    wait_for(lambda: backend.status(job) == "RUNNING", 300, "the job to run")
    # RUNNING can come before the entrypoint's shell has started the Python process: wait for it.
    def drivers_in(procs: dict[int, Any]) -> list[Any]:
        return [p for p in procs.values() if "sleep(301)" in _cmdline(p.pid)]

    wait_for(lambda: bool(drivers_in(head.processes())), 300, "the driver process to start")
    procs = head.processes()
    drivers = drivers_in(procs)  # the same listing the survivors are checked against
    assert drivers and all(d.sid != head.pid for d in drivers)  # Ray put the driver in its own session
    url = runtime.settings.ray_dashboard_url
    runtime.stop()
    survivors = [p.pid for p in procs.values()
                 if (now := read_proc(p.pid)) is not None and now.start_ticks == p.start_ticks]
    assert survivors == []
    assert runtime.head is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/api/version", timeout=2)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:  # the process ended between the listing and the read
        return ""
