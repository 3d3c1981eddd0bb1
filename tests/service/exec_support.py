"""Helpers of the execution-side tests (dispatcher, driver, Ray): a fake Ray backend, a uvicorn
server on a chosen port, a tiny job spec, polling. Imported by test modules (not a conftest)."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.core.config import Settings
from service.ray_backend import RayJobExists, RayJobInfo, RayRequestError, RayUnavailable

ADMIN_TOKEN = "ramp_exec-tests-admin-token-0123456789abcdef"


def tiny_train_spec(**overrides: Any) -> dict[str, Any]:
    """A real RAMP training job that finishes in seconds on one CPU."""
    spec: dict[str, Any] = {
        "kind": "train", "method": "ramp", "dataset": "mnist-5k", "model": "small-cnn",
        "epochs": 1, "max_steps": 3, "train_n": 64, "batch_size": 32, "eval_n": 16, "checks_n": 0,
        "monitor_n": 0,
        "seed": 0, "params": {"attack.steps_linf": 2, "attack.steps_l2": 2, "attack.steps_l1": 2},
    }
    return spec | overrides


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def short_tmpdir(prefix: str) -> Path:
    """A temp dir short enough for Ray's Unix socket paths (pytest's tmp_path is too long)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextlib.contextmanager
def running_server(app: Any, port: int) -> Iterator[str]:
    """uvicorn serving ``app`` on 127.0.0.1:``port`` in a thread, with its lifespan."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 60, "uvicorn to start", 0.02)
        if not server.started:
            raise AssertionError("uvicorn exited during start-up")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def make_test_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home, "database_url": f"sqlite:///{home / 'ramp.db'}", "ray_address": None,
        "log_level": "WARNING", "sse_poll_interval_s": 0.05, "admin_token": ADMIN_TOKEN,
        # Retries at once: the node-loss test (test_ray_nodes.py) is the one that needs the delay.
        "retry_delay_s": 0.0,
    }
    return Settings(**(values | overrides))


def external_ray_settings(settings: Settings, dashboard_url: str) -> Settings:
    """Point settings at an already running Ray head (as RAY_ADDRESS would)."""
    settings.ray_address = dashboard_url
    settings.ray_dashboard_url = dashboard_url
    settings.admin_token = ADMIN_TOKEN
    return settings


@dataclass
class FakeRayJob:
    entrypoint: str
    env_vars: dict[str, str]
    num_cpus: float | None
    num_gpus: float | None
    status: str = "PENDING"
    message: str | None = None
    stop_calls: int = 0


@dataclass
class FakeBackend:
    """An in-memory RayBackend: tests move jobs through Ray states by hand."""

    dashboard_url: str | None = "http://fake-ray:8265"
    jobs: dict[str, FakeRayJob] = field(default_factory=dict)
    unavailable: bool = False
    refuse: bool = False
    stop_takes_effect: bool = True

    def _check(self) -> None:
        if self.unavailable:
            raise RayUnavailable("fake Ray is down")

    def submit(self, entrypoint: str, submission_id: str, *, env_vars: dict[str, str] | None = None,
               num_cpus: float | None = None, num_gpus: float | None = None,
               metadata: dict[str, str] | None = None) -> str:
        self._check()
        if self.refuse:
            raise RayRequestError("fake Ray refuses: bad entrypoint", 400)
        if submission_id in self.jobs:
            raise RayJobExists(f"{submission_id} already exists", 400)
        self.jobs[submission_id] = FakeRayJob(entrypoint, dict(env_vars or {}), num_cpus, num_gpus)
        return submission_id

    def info(self, ray_job_id: str) -> RayJobInfo | None:
        self._check()
        job = self.jobs.get(ray_job_id)
        return None if job is None else RayJobInfo(status=job.status, message=job.message)

    def status(self, ray_job_id: str) -> str | None:
        info = self.info(ray_job_id)
        return None if info is None else info.status

    def stop(self, ray_job_id: str) -> bool:
        self._check()
        job = self.jobs.get(ray_job_id)
        if job is None or job.status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return False
        job.stop_calls += 1
        if self.stop_takes_effect:
            job.status = "STOPPED"
        return True

    def logs(self, ray_job_id: str) -> str | None:
        self._check()
        return "fake log\n" if ray_job_id in self.jobs else None

    def ping(self) -> bool:
        return not self.unavailable

    def only(self) -> tuple[str, FakeRayJob]:
        assert len(self.jobs) == 1, list(self.jobs)
        return next(iter(self.jobs.items()))


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[Any]:
    """A real local Ray head on free ports (auth disabled), stopped -- only its own processes."""
    import shutil

    from service.ray_local import LocalRayHead

    tmp = short_tmpdir("rampray-")
    head = LocalRayHead(tmp_dir=tmp, num_cpus=num_cpus, dashboard_port=0, auth_mode="disabled")
    try:
        head.start()
        yield head
    finally:
        head.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def service_settings(home: Path, dashboard_url: str, port: int, **overrides: Any) -> Settings:
    """Settings of a service using an external head (RAY_ADDRESS mode) on 127.0.0.1:port."""
    settings = make_test_settings(
        home, port=port, public_url=f"http://127.0.0.1:{port}", dispatch_interval_s=0.2,
        max_concurrent_jobs=2, **overrides,
    )
    return external_ray_settings(settings, dashboard_url)


@contextlib.contextmanager
def live_service(settings: Settings) -> Iterator[Any]:
    """The full service (API + dispatcher) on settings.port; yields an authenticated client."""
    import httpx

    from service.main import create_app

    app = create_app(settings)
    with running_server(app, settings.port) as url, httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


@contextlib.contextmanager
def service_on_ray_head(home: Path, num_cpus: int = 2) -> Iterator[Any]:
    """A real local Ray head (``ray_head``) and the full service using it on a free port
    (``service_settings``, ``live_service``); yields the service's client, with the head and the
    settings as its ``head`` and ``settings``."""
    from service.ray_local import free_port

    with ray_head(num_cpus) as head:
        settings = service_settings(home, head.dashboard_url, free_port())
        with live_service(settings) as client:
            client.head = head
            client.settings = settings
            yield client


def wait_status(client: Any, job_id: int, statuses: set[str], timeout_s: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    try:
        return wait_for(check, timeout_s, f"job {job_id} to become {'/'.join(sorted(statuses))}", 0.2)
    except AssertionError:
        job = client.get(f"/v1/jobs/{job_id}").json()
        raise AssertionError(f"job {job_id} is {job['status']} after {timeout_s} s: {job}") from None


def events(client: Any, job_id: int, type_: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 1000}
    if type_:
        params["type"] = type_
    return client.get(f"/v1/jobs/{job_id}/events", params=params).json()["events"]


def tensors_of(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor in a nested state (dicts and lists), by its dotted path."""
    import torch

    if isinstance(value, torch.Tensor):
        return {prefix: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    out: dict[str, Any] = {}
    for key, item in items:
        out |= tensors_of(item, f"{prefix}.{key}" if prefix else str(key))
    return out


def checkpoint_state(job_dir: Any) -> dict[str, Any]:
    """The final checkpoint's weights (model.safetensors) and resumable state (optimiser, method)."""
    from safetensors.torch import load_file

    from workers import checkpoint

    ckpt = job_dir / checkpoint.SUBDIR
    state = checkpoint.load_train_state(ckpt)
    return {"model": load_file(str(ckpt / checkpoint.WEIGHTS_FILE)),
            "optimizer": tensors_of(state["optimizer"]), "method": tensors_of(state["method"]),
            "progress": (state["epoch"], state["step"])}


def state_diffs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Max abs difference of every tensor of two ``checkpoint_state``s ("model.<name>", ...); the
    keys, dtypes and shapes must match."""
    diffs: dict[str, float] = {}
    for part in ("model", "optimizer", "method"):
        assert a[part].keys() == b[part].keys(), part
        for key in a[part]:
            x, y = a[part][key], b[part][key]
            assert x.dtype == y.dtype and x.shape == y.shape, (part, key)
            diffs[f"{part}.{key}"] = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
    return diffs
