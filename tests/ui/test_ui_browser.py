"""The web pages in a real browser (Debian's chromium driven by Playwright) against the full service on
a real local Ray head, with real jobs: two tiny training runs (RAMP and E-AT), a tiny 2x2 sweep and a
long run to cancel. Each page must show the numbers the API recorded and draw its charts with them;
the cancel button must stop a running job. Screenshots of each page go to $RAMP_UI_SCREENSHOTS
(docs/screenshots/ for the committed ones) or to a temporary directory.

The machine may be loaded (2 cores shared with other work): nothing here waits a fixed time; every
wait is for a condition (a job's status, an element, a chart's data) with a generous bound."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from exec_support import ADMIN_TOKEN, service_on_ray_head, tiny_train_spec, wait_for, wait_status

from workers.contract.display import interval_text
from workers.contract.metrics import intervals

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ACCURACY_KEYS = ("clean", "linf", "l2", "l1", "union")
FINISHED = {"succeeded", "failed", "cancelled"}
TIMEOUT_MS = 300_000  # any one wait of the pages (an element, a URL, a chart's data)
JOB_TIMEOUT_S = 1800  # a tiny job or the tiny sweep on a loaded 2-core machine


def tiny(**overrides: Any) -> dict[str, Any]:
    """Three short epochs, with the per-epoch monitor and the rigour checks (and so their
    accuracy-vs-radius curves) on a handful of points. The radii grow over the first half of the
    steps (eps_warmup), so the model learns enough in 45 steps for the numbers and curves to differ
    from chance."""
    spec = tiny_train_spec(epochs=3, max_steps=45, train_n=480, eval_n=32, checks_n=8, monitor_n=32,
                           eps_warmup=0.5)
    return spec | overrides


SWEEP = {"kind": "sweep",
         "base": tiny_train_spec(epochs=3, max_steps=45, train_n=480, monitor_n=32, eval_n=32,
                                 eps_warmup=0.5),
         "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}, "epsilons.l1": {"grid": [8, 12]}},
         "metric": "union", "mode": "max", "max_concurrent_trials": 2}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def acc(metrics: dict[str, Any], key: str) -> str:
    """A results cell as the page draws it: the accuracy, its 95 % interval on the line below."""
    interval = intervals(metrics).get(key)
    return pct(metrics[key]) + (f"\n{interval_text(interval)}" if interval else "")


@dataclass
class Live:
    client: Any  # httpx.Client with the admin token
    url: str
    settings: Any
    ramp: int
    eat: int
    sweep: int
    shots: Path

    def job(self, job_id: int) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def finished(self, job_id: int, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        job = wait_status(self.client, job_id, FINISHED, timeout_s)
        assert job["status"] == "succeeded", (job, self.client.get(f"/v1/jobs/{job_id}/logs").text[-3000:])
        return job


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: scripts/test.sh installs it (apt-get)"
    shots = Path(os.environ.get("RAMP_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with service_on_ray_head(tmp_path_factory.mktemp("home"), num_cpus=2) as client:
        ids = [client.post("/v1/jobs", json=spec).json()["id"]
               for spec in (tiny(), tiny(method="eat"), SWEEP)]
        yield Live(client, str(client.base_url).rstrip("/"), client.settings, *ids, shots=shots)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # launch() gives every run a fresh temporary profile (user-data-dir).
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    """A fresh browser context (no cookies) logged in through the login form; the test fails on any
    script error or failed resource the pages report."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    pg.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    pg.goto(f"{live.url}/ui/jobs")
    assert "/ui/login" in pg.url
    pg.fill("#token", ADMIN_TOKEN)
    pg.click("#login-form button[type=submit]")
    pg.wait_for_url(f"{live.url}/ui/jobs")
    yield pg
    context.close()
    assert errors == []


def chart(pg: Any, canvas_id: str) -> dict[str, Any] | None:
    """The Chart.js chart drawn on a canvas: its type, labels and datasets (None if there is none)."""
    return pg.evaluate(
        """id => { const c = Chart.getChart(document.getElementById(id)); if (!c) return null;
                   return {type: c.config.type, labels: c.data.labels,
                           datasets: c.data.datasets.map(d => ({label: d.label, data: d.data}))}; }""",
        canvas_id)


def painted(pg: Any, canvas_id: str) -> int:
    """How many pixels of the canvas are drawn on (not transparent)."""
    return pg.evaluate(
        """id => { const c = document.getElementById(id);
                   const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++; return n; }""",
        canvas_id)


def shoot(pg: Any, live: Live, name: str, until: str | None = None) -> None:
    """A screenshot of the page, from its top to the end of the element ``until`` (the whole page
    when None), as ``<name>.png``."""
    path = live.shots / f"{name}.png"
    clip = None
    if until is not None:
        bottom = pg.evaluate(
            "sel => document.querySelector(sel).getBoundingClientRect().bottom + window.scrollY", until)
        width = pg.evaluate("document.documentElement.scrollWidth")
        clip = {"x": 0, "y": 0, "width": width, "height": int(bottom) + 24}
    pg.screenshot(path=str(path), full_page=True, clip=clip)
    assert path.stat().st_size > 10_000


def cell_texts(pg: Any, selector: str) -> list[str]:
    return [t.strip() for t in pg.locator(selector).all_inner_texts()]


# ------------------------------------------------------------------------------------- tests


def test_login_sets_an_httponly_samesite_cookie_and_the_jobs_page_lists_the_jobs(browser: Any,
                                                                                  live: Live) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    pg.goto(f"{live.url}/ui/jobs/{live.ramp}")
    assert pg.url.startswith(f"{live.url}/ui/login?next=")
    shoot(pg, live, "login")
    pg.fill("#token", "ramp_not-a-token")
    pg.click("#login-form button[type=submit]")
    assert "invalid or revoked token" in pg.inner_text("#error")
    pg.fill("#token", ADMIN_TOKEN)
    pg.click("#login-form button[type=submit]")
    pg.wait_for_url(f"{live.url}/ui/jobs/{live.ramp}")  # back to the page first asked for
    (cookie,) = context.cookies()
    assert cookie["name"] == "ramp_ui_session" and cookie["value"].startswith("rampui_")
    assert ADMIN_TOKEN not in cookie["value"]  # the browser holds a session id, never the token
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert ADMIN_TOKEN not in pg.evaluate("document.cookie")  # scripts cannot read it
    pg.goto(f"{live.url}/ui/jobs")
    ids = pg.locator("#job-rows tr").evaluate_all("rows => rows.map(r => Number(r.dataset.jobId))")
    assert ids[-3:] == [live.sweep, live.eat, live.ramp]
    context.close()


def test_the_job_page_shows_the_recorded_results_and_draws_its_charts(page: Any, live: Live) -> None:
    job = live.finished(live.ramp)
    metrics = job["metrics"]
    page.goto(f"{live.url}/ui/jobs/{live.ramp}")
    page.wait_for_selector("body[data-charts-ready]")
    assert page.inner_text("#status") == "succeeded"
    row = cell_texts(page, "#results tbody td")
    assert row[0] == "standard" and row[1] == str(metrics["n"])
    assert row[2:7] == [acc(metrics, k) for k in ACCURACY_KEYS]
    warnings = page.inner_text("#warnings")
    if job["warnings"]:
        assert all(w in warnings for w in job["warnings"])
    else:
        assert warnings == "No warnings."
    assert page.locator("#checks tbody tr").count() >= 3 + 1  # a curve per norm, ordering, ...

    # Accuracy vs radius: one chart per norm, with the recorded curve.
    for norm, curve in metrics["checks"]["curves"].items():
        drawn = chart(page, f"radius-{norm}")
        assert drawn["datasets"][0]["data"] == curve["accuracy"]
        assert len(drawn["labels"]) == len(curve["radius"]) and painted(page, f"radius-{norm}") > 1000

    # Per epoch: the monitor suite's accuracies (labelled an upper bound) and the loss parts.
    history = live.client.get(f"/v1/jobs/{live.ramp}/metrics").json()["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # tiny(): three epochs
    accuracy = chart(page, "epoch-accuracy")
    assert accuracy["labels"] == [1, 2, 3]
    assert {d["label"]: d["data"] for d in accuracy["datasets"]} == {
        label: [h["monitor"][k] for h in history]
        for k, label in zip(ACCURACY_KEYS, ("clean", "l_inf", "l_2", "l_1", "union"), strict=True)}
    assert "monitor suite, an upper bound" in page.inner_text("#epochs")
    losses = chart(page, "epoch-losses")
    assert {d["label"]: d["data"] for d in losses["datasets"]} == {
        part: [h["losses"][part] for h in history] for part in history[0]["losses"]}
    assert painted(page, "epoch-accuracy") > 1000 and painted(page, "epoch-losses") > 1000

    timeline = page.inner_text("#timeline")
    assert all(s in timeline for s in ("queued", "dispatching", "running", "succeeded"))
    assert page.get_attribute("#ray-link", "href") == job["ray_dashboard_url"]
    link = page.locator("#artifacts a", has_text="metrics.json").first
    download = page.request.get(live.url + link.get_attribute("href"))  # with the page's cookie
    assert download.ok and download.json()["union"] == metrics["union"]
    page.wait_for_function("document.getElementById('driver-log').textContent.includes('workers.jobs.driver')")
    shoot(page, live, "job", until="#timeline-box")


def test_the_jobs_page_filters_and_updates_live(page: Any, live: Live) -> None:
    live.finished(live.eat)
    page.goto(f"{live.url}/ui/jobs")
    page.select_option("#filter-method", "eat")
    page.click("#filters button[type=submit]")
    page.wait_for_url(lambda url: "method=eat" in url)
    shown = page.locator("#job-rows tr").evaluate_all("rs => rs.map(r => Number(r.dataset.jobId))")
    assert shown == [live.eat]
    eat = live.job(live.eat)["metrics"]
    assert page.inner_text(f"tr[data-job-id='{live.eat}'] .acc-clean") == acc(eat, "clean")
    assert page.inner_text(f"tr[data-job-id='{live.eat}'] .acc-union").startswith(pct(eat["union"]))

    # Unfiltered, the page shows a job submitted (and then cancelled) after it was loaded, without
    # being reloaded.
    page.goto(f"{live.url}/ui/jobs")
    page.evaluate("window.__notReloaded = true")
    new_id = live.client.post("/v1/jobs", json=tiny()).json()["id"]
    live.client.post(f"/v1/jobs/{new_id}/cancel")
    wait_status(live.client, new_id, {"cancelled"}, JOB_TIMEOUT_S)
    page.wait_for_selector(f"tr[data-job-id='{new_id}'][data-status='cancelled']")
    assert page.evaluate("window.__notReloaded") is True
    ramp = live.job(live.ramp)["metrics"]
    assert page.inner_text(f"tr[data-job-id='{live.ramp}'] .acc-union").startswith(pct(ramp["union"]))


def test_the_compare_page_puts_the_jobs_side_by_side(page: Any, live: Live) -> None:
    jobs = {i: live.finished(i)["metrics"] for i in (live.ramp, live.eat)}
    page.goto(f"{live.url}/ui/jobs")
    page.check(f"tr[data-job-id='{live.ramp}'] input[name=ids]")
    page.check(f"tr[data-job-id='{live.eat}'] input[name=ids]")
    page.click("#compare-form button[type=submit]")
    page.wait_for_selector("body[data-charts-ready]")
    rows = page.locator("#compare-table tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => Number(r.dataset.jobId))") == [live.eat, live.ramp]
    for job_id, label in ((live.ramp, f"#{live.ramp} ramp"), (live.eat, f"#{live.eat} eat")):
        tr = f"#compare-table tr[data-job-id='{job_id}']"
        assert page.inner_text(f"{tr} td:first-child") == label
        assert [page.inner_text(f"{tr} .acc-{k}") for k in ACCURACY_KEYS] == [acc(jobs[job_id], k)
                                                                            for k in ACCURACY_KEYS]
    for norm in ("linf", "l2", "l1"):
        drawn = chart(page, f"compare-radius-{norm}")
        assert {d["label"] for d in drawn["datasets"]} == {f"#{live.ramp} ramp", f"#{live.eat} eat"}
        for d in drawn["datasets"]:
            job_id = live.ramp if d["label"].endswith("ramp") else live.eat
            recorded = jobs[job_id]["checks"]["curves"][norm]["accuracy"]
            assert [a for a in d["data"] if a is not None] == recorded
        assert painted(page, f"compare-radius-{norm}") > 1000
    assert len(chart(page, "compare-epochs")["datasets"]) == 2
    shoot(page, live, "compare")


def expected_cell(trial: dict[str, Any]) -> float | None:
    """A heat-map cell's number: the trial's monitor-suite union accuracy (docs/ui.md)."""
    final = trial.get("final") or {}
    if final.get("suite") == "monitor":
        return final["union"]
    if isinstance(final.get("monitor"), dict):
        return final["monitor"]["union"]
    if final:
        return final["union"]
    return trial["metrics"][-1]["union"] if trial["metrics"] else None


def test_the_sweep_page_shows_the_trials_the_heat_map_and_starts_a_fine_tune(page: Any, live: Live) -> None:
    job = live.finished(live.sweep)
    listing = live.client.get(f"/v1/jobs/{live.sweep}/trials").json()
    best = listing["best_trial_id"]
    assert best == job["metrics"]["best_trial_id"]
    page.goto(f"{live.url}/ui/jobs/{live.sweep}")
    page.wait_for_selector("body[data-charts-ready]")
    rows = page.locator("#trials tbody tr")
    shown = rows.evaluate_all("rs => rs.map(r => r.dataset.trial)")
    assert shown == [t["trial_id"] for t in listing["trials"]]
    assert page.locator("#trials tr.best").get_attribute("data-trial") == best
    assert page.inner_text("#best-trial") == best
    for t in listing["trials"]:
        tr = f"#trials tr[data-trial='{t['trial_id']}']"
        assert page.inner_text(f"{tr} .acc-union") == pct(t["final"]["union"])
        assert page.get_attribute(f"{tr} a.ckpt", "href") == (
            f"/ui/jobs/{live.sweep}/artifacts/{t['checkpoint']}/model.safetensors")
    ckpt = page.request.get(live.url + page.get_attribute(f"#trials tr[data-trial='{best}'] a.ckpt", "href"))
    assert ckpt.ok and len(ckpt.body()) > 1000

    heat = chart(page, "heatmap")
    assert heat["type"] == "matrix"
    cells = heat["datasets"][0]["data"]
    assert len(cells) == 4 and painted(page, "heatmap") > 1000
    by_trial = {t["trial_id"]: t for t in listing["trials"]}
    for cell in cells:
        (tid,) = cell["trials"]
        trial = by_trial[tid]
        assert (cell["y"], cell["x"]) == (f"{trial['config']['params.ramp.lambda']:g}",
                                          f"{trial['config']['epsilons.l1']:g}")
        assert cell["v"] == pytest.approx(expected_cell(trial))
        assert cell["best"] is (tid == best)
    # Results of the sweep: its best trial's default-suite evaluation.
    assert cell_texts(page, "#results tbody td")[2:7] == [acc(job["metrics"], k) for k in ACCURACY_KEYS]
    shoot(page, live, "sweep", until="#final")

    page.click(f"#trials tr[data-trial='{best}'] a.finetune")
    page.wait_for_url(lambda url: "/ui/submit?kind=finetune" in url)
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(lambda url: "/ui/jobs/" in url)
    new_id = int(page.url.rsplit("/", 1)[1])
    spec = live.job(new_id)["spec"]
    assert spec["kind"] == "finetune" and spec["source_job_id"] == live.sweep and spec["source_trial"] == best
    live.client.post(f"/v1/jobs/{new_id}/cancel")  # only its submission is under test here
    wait_status(live.client, new_id, FINISHED, JOB_TIMEOUT_S)


def test_a_running_job_is_drawn_live_and_the_cancel_button_stops_it(page: Any, live: Live) -> None:
    for job_id in (live.ramp, live.eat, live.sweep):  # the jobs page's screenshot shows them done
        live.finished(job_id)
    job_id = live.client.post("/v1/jobs", json=tiny(epochs=50, max_steps=None, train_n=256)).json()["id"]
    wait_status(live.client, job_id, {"running"}, JOB_TIMEOUT_S)
    wait_for(lambda: live.client.get(f"/v1/jobs/{job_id}/metrics").json()["history"], JOB_TIMEOUT_S,
             "a first epoch", 0.5)

    # The jobs page: every job with its numbers, the running one with its progress.
    page.goto(f"{live.url}/ui/jobs")
    running = f"tr[data-job-id='{job_id}'][data-status='running']"
    page.wait_for_selector(f"{running} progress")
    for done in (live.ramp, live.eat, live.sweep):
        union = live.job(done)["metrics"]["union"]
        assert page.inner_text(f"tr[data-job-id='{done}'] .acc-union").startswith(pct(union))
    shoot(page, live, "jobs", until="main")

    # The job page draws the epochs as they come, without being reloaded.
    page.goto(f"{live.url}/ui/jobs/{job_id}")
    page.wait_for_selector("body[data-charts-ready]")
    assert page.inner_text("#status") == "running"
    first = len(chart(page, "epoch-accuracy")["labels"])
    assert first >= 1, "the running job's first epoch is drawn"
    page.evaluate("window.__notReloaded = true")
    page.wait_for_function(
        "n => { const c = Chart.getChart(document.getElementById('epoch-accuracy'));"
        "       return c && c.data.labels.length >= n; }", arg=max(3, first + 1))
    assert page.evaluate("window.__notReloaded") is True
    history = live.client.get(f"/v1/jobs/{job_id}/metrics").json()["history"]
    drawn = chart(page, "epoch-accuracy")
    union = next(d["data"] for d in drawn["datasets"] if d["label"] == "union")
    assert union == [h["monitor"]["union"] for h in history][:len(union)]
    assert painted(page, "epoch-accuracy") > 1000 and painted(page, "epoch-losses") > 1000
    shoot(page, live, "job-running", until="#timeline-box")

    page.click("#cancel")
    # The page follows the job: cancelling, then cancelled once Ray stopped it (it reloads itself
    # on each change of status).
    page.wait_for_selector("#status:text-is('cancelled')")
    assert live.job(job_id)["status"] == "cancelled"
    assert page.locator("#retry").count() == 1 and page.locator("#cancel").count() == 0
    assert "cancelled by user" in page.inner_text("#timeline")
