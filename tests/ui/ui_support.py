"""Helpers of the web-page tests: jobs recorded through the same store functions the dispatcher and
the job drivers' reports go through, and metrics shaped as the workers write them."""

from __future__ import annotations

import re
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

# The app's test client (api_support) and the execution-side helpers (a real Ray head, the full
# service, tiny job specs) live beside the service tests; the web-page tests reuse them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from api_support import Api, app_without_ray  # noqa: E402

from service.core.config import Settings  # noqa: E402
from workers.contract.samples import per_sample_block  # noqa: E402

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


class Ui(Api):
    """The service tests' ``Api`` (client, app, settings, admin token) with the page tests' helpers."""

    def submit(self, spec: dict[str, Any], token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        r = self.client.post("/v1/jobs", json=spec, headers=headers)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def run(self, job_id: int, *, events: list[dict[str, Any]] = (), ray_job_id: str | None = None) -> None:
        """queued -> dispatching -> running, then the driver's events (numbered as a driver does)."""
        from service.events import store as event_store
        from service.jobs import transitions

        with self.sessions()() as s:
            transitions.transition(s, job_id, "dispatching")
            transitions.transition(s, job_id, "running", ray_job_id=ray_job_id or f"ramp-{job_id}-1")
            if events:
                event_store.add_events(s, job_id, [{"seq": i} | e for i, e in enumerate(events)])

    def finish(self, job_id: int, result: dict[str, Any], status: str = "succeeded") -> None:
        from service.jobs import transitions

        with self.sessions()() as s:
            transitions.transition(s, job_id, status, result=result,
                                   error="boom" if status == "failed" else None)

    def login(self, token: str | None = None) -> str:
        """Log in through the form; returns the CSRF token the pages then carry."""
        r = self.client.post("/ui/login", data={"token": token or self.token, "next": "/ui/jobs"},
                             follow_redirects=False)
        assert r.status_code == 303, r.text
        page = self.client.get("/ui/jobs")
        assert page.status_code == 200
        m = CSRF.search(page.text)
        assert m is not None
        return m.group(1)


def ui_app(settings: Settings) -> AbstractContextManager[Ui]:
    """The app without Ray behind TestClient, as a ``Ui``."""
    return app_without_ray(settings, Ui)


def epoch_report(epoch: int, *, clean: float, union: float, ce: float, pairing: float) -> dict[str, Any]:
    """A ``metrics`` event's data as a training driver reports it (``EpochReport.to_dict()``)."""
    return {
        "epoch": epoch, "epochs": 2, "step": 2 * epoch, "total_steps": 4, "lr": 0.05,
        "losses": {"ce": ce, "pairing": pairing}, "train_robust_acc": {"linf": 0.1, "l1": 0.2},
        "seconds": 0.4,
        "monitor": {"clean": clean, "linf": union + 0.1, "l2": union + 0.2, "l1": union + 0.05,
                    "union": union},
        "monitor_suite": "monitor", "monitor_upper_bound": True,
    }


def final_metrics(clean: float, linf: float, l2: float, l1: float, union: float, *,
                  warnings: list[str] = (), n_checks: int = 60, checks: dict[str, Any] | None = None,
                  union_flags: list[bool] | None = None) -> dict[str, Any]:
    """A training job's final metrics as ``metrics.json`` has them (``docs/evaluation.md``); the
    rigour checks ran on ``n_checks`` points (fewer than 50: inconclusive); ``checks`` replaces the
    whole checks report (e.g. one from before verdicts had a status); ``union_flags`` adds the
    per-sample block (every point clean-correct, ``union`` as given) on one shared set of 200
    points, for paired tests."""
    decided = "passed" if n_checks >= 50 else "inconclusive"
    curve = {"linf": [0.0, 0.15, 0.3, 0.6, 1.0], "l2": [0.0, 1.0, 2.0, 4.0, 8.0, 28.0],
             "l1": [0.0, 5.0, 10.0, 20.0, 40.0, 784.0]}
    accs = {"linf": linf, "l2": l2, "l1": l1}
    curves = {
        norm: {"n": n_checks, "status": decided, "radius": radii,
               "accuracy": [clean] + [accs[norm] / (i + 1) for i in range(len(radii) - 2)] + [0.0],
               "eps": radii[2], "unbounded": radii[-1], "rises_at": [], "seconds": 0.1}
        for norm, radii in curve.items()
    }
    sample = min(n_checks, 50)
    inconclusive = [] if decided == "passed" else [f"linf iterations: only {sample} relevant point(s)"]
    return {
        "clean": clean, "linf": linf, "l2": l2, "l1": l1, "union": union, "n": 200,
        "epsilons": {"linf": 0.3, "l2": 2.0, "l1": 10.0}, "suite": "standard", "upper_bound": False,
        "precision": "fp32", "seconds": 1.0,
        "checks": {
            "n": n_checks, "min_points": 50, "status": "failed" if warnings else decided,
            "warnings": list(warnings), "inconclusive": inconclusive, "curves": curves,
            "iterations": {"linf": {"n": sample, "status": decided, "steps": 1000, "moved": 0}},
            "square": {"l2": {"n": sample, "status": "failed" if warnings else decided, "queries": 5000,
                              "found": 2 if warnings else 0}},
            "sanity": {"gradients": {"n": 180, "status": "passed", "zero": 0, "nonfinite": 0}},
        } if checks is None else checks,
    } | ({} if union_flags is None else {"per_sample": per_sample_block(
        "shared-points", {"clean": [True] * len(union_flags), "union": union_flags})})
    return {
        "clean": clean, "linf": linf, "l2": l2, "l1": l1, "union": union, "n": 16,
        "epsilons": {"linf": 0.3, "l2": 2.0, "l1": 10.0}, "suite": "standard", "upper_bound": False,
        "precision": "fp32", "seconds": 1.0,
        "checks": {
            "n": 8, "passed": not warnings, "warnings": list(warnings), "curves": curves,
            "iterations": {"linf": {"n": 2, "steps": 1000, "default": linf, "more": linf, "passed": True}},
            "square": {"l2": {"n": 2, "attacked": 1, "queries": 5000, "found": 1 if warnings else 0,
                              "default": l2, "after": l2, "passed": not warnings}},
            "ordering": {"passed": True, "clean": clean, "union": union, "linf": linf, "l2": l2, "l1": l1},
        },
    }
