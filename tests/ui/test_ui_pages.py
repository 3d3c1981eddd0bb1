"""The web pages over HTTP (no browser, no Ray): login and tokens, what each page shows of the
recorded jobs, the CSRF rule on the buttons, downloads, submitting, and the vendored libraries."""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from ui_support import Ui, epoch_report, final_metrics

from service.auth import tokens
from service.core.security import generate_token
from service.events import store as event_store
from service.ui import views
from workers.contract.results import result_warnings
from workers.contract.stats import mcnemar_exact

TRAIN = {"kind": "train", "method": "ramp", "epochs": 2, "max_steps": 4}
PAGE_DATA = re.compile(r'<script id="page-data" type="application/json">(.*?)</script>', re.S)
VENDOR = Path(__file__).resolve().parents[2] / "service" / "ui" / "static" / "vendor"


def page_data(text: str) -> dict[str, Any]:
    m = PAGE_DATA.search(text)
    assert m is not None, "the page has no chart data"
    return json.loads(m.group(1))


def row_of(text: str, job_id: int) -> str:
    m = re.search(rf'<tr data-job-id="{job_id}".*?</tr>', text, re.S)
    assert m is not None, f"no row for job {job_id}"
    return m.group(0)


def recorded_job(ui: Ui, spec: dict[str, Any] = TRAIN, **result: Any) -> int:
    job_id = ui.submit(spec)
    ui.run(job_id, events=[
        {"type": "metrics", "data": epoch_report(1, clean=0.5, union=0.1, ce=2.1, pairing=0.3)},
        {"type": "metrics", "data": epoch_report(2, clean=0.7, union=0.2, ce=1.4, pairing=0.2)},
        {"type": "log", "data": {"message": "epoch 2 <done>", "level": "info"}},
    ])
    ui.finish(job_id, final_metrics(**result))
    return job_id


# --------------------------------------------------------------------------------------- auth


def test_pages_send_a_browser_without_a_token_to_the_login_page(ui: Ui) -> None:
    r = ui.client.get("/ui/jobs?method=ramp", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fmethod%3Dramp"
    assert ui.client.get("/ui/", follow_redirects=False).headers["location"] == "/ui/jobs"
    # What the pages' script fetches answers 401 instead (the script then reloads into the login page).
    for path in ("/ui/fragments/jobs", "/ui/api/jobs/1", "/ui/jobs/1/log"):
        assert ui.client.get(path).status_code == 401, path
    login = ui.client.get("/ui/login?next=/ui/jobs/3")
    assert login.status_code == 200 and 'name="next" value="/ui/jobs/3"' in login.text


def test_login_sets_an_httponly_samesite_cookie_that_opens_the_pages(ui: Ui) -> None:
    job_id = ui.submit(TRAIN)
    r = ui.client.post("/ui/login", data={"token": ui.token, "next": f"/ui/jobs/{job_id}"},
                       follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ui/jobs/{job_id}"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("ramp_ui_session=rampui_") and ui.token not in cookie  # an id, not the token
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    page = ui.client.get(f"/ui/jobs/{job_id}", follow_redirects=False)
    assert page.status_code == 200 and f"Job {job_id}" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    # The REST API does not take the cookie: it stays bearer-only.
    assert ui.client.get("/v1/jobs").status_code == 401

    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
    out = ui.client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and 'ramp_ui_session=""' in out.headers["set-cookie"]
    assert ui.client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_login_refuses_a_wrong_token_and_never_redirects_off_site(ui: Ui) -> None:
    r = ui.client.post("/ui/login", data={"token": "ramp_wrong", "next": "/ui/jobs"}, follow_redirects=False)
    assert r.status_code == 401 and "invalid or revoked token" in r.text and "set-cookie" not in r.headers
    for target in ("https://evil.example/", "//evil.example/x", "/v1/jobs", "/ui/login?next=x"):
        r = ui.client.post("/ui/login", data={"token": ui.token, "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/ui/jobs", target


def test_a_revoked_token_loses_the_pages(ui: Ui) -> None:
    token = generate_token()
    with ui.sessions()() as s:
        row = tokens.create_api_token(s, "alice", token)
    assert ui.client.get("/ui/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    ui.login(token)
    with ui.sessions()() as s:
        tokens.revoke_api_token(s, row.id)
    assert ui.client.get("/ui/jobs", follow_redirects=False).status_code == 303
    assert ui.client.get("/ui/jobs", headers={"Authorization": f"Bearer {token}"},
                         follow_redirects=False).status_code == 303


def test_a_non_admin_token_sees_on_the_pages_what_the_api_shows_it(ui: Ui) -> None:
    token = generate_token()
    with ui.sessions()() as s:
        tokens.create_api_token(s, "bob", token)
    own = ui.submit(TRAIN, token=token)
    admins = ui.submit(TRAIN | {"method": "eat"})
    bearer = {"Authorization": f"Bearer {token}"}
    api_ids = {j["id"] for j in ui.client.get("/v1/jobs", headers=bearer).json()["jobs"]}
    fragment = ui.client.get("/ui/fragments/jobs", headers=bearer).text
    assert {int(i) for i in re.findall(r'<tr data-job-id="(\d+)"', fragment)} == api_ids
    assert own in api_ids
    for job_id in (own, admins, 999):
        api = ui.client.get(f"/v1/jobs/{job_id}", headers=bearer).status_code
        page = ui.client.get(f"/ui/jobs/{job_id}", headers=bearer).status_code
        live = ui.client.get(f"/ui/api/jobs/{job_id}", headers=bearer).status_code
        assert page == live == api, (job_id, api, page, live)


# -------------------------------------------------------------------------------------- pages


def test_the_jobs_page_shows_the_recorded_numbers_and_filters(ui: Ui) -> None:
    ramp = recorded_job(ui, clean=0.9, linf=0.41, l2=0.52, l1=0.33, union=0.275)
    eat = recorded_job(ui, TRAIN | {"method": "eat"}, clean=0.8, linf=0.3, l2=0.4, l1=0.2, union=0.125,
                       warnings=["l2: the black-box Square attack fooled 1 point(s)"])
    queued = ui.submit({"kind": "eval", "job_id": ramp, "n": 8})
    text = ui.client.get("/ui/jobs", headers=ui.auth).text
    row = row_of(text, ramp)
    for cell in ("succeeded", "train", "ramp", "mnist-5k", "small-cnn", "90.0%", "27.5%", "done"):
        assert f">{cell}<" in row or f"> {cell}<" in row or cell in row, cell
    eat_row = row_of(text, eat)
    assert "80.0%" in eat_row and "12.5%" in eat_row and "1 warning(s)" in eat_row
    eval_row = row_of(text, queued)
    assert "queued" in eval_row and f'href="/ui/jobs/{ramp}"' in eval_row  # "eval of #ramp"

    by_method = ui.client.get("/ui/jobs?method=eat", headers=ui.auth).text
    assert re.findall(r'<tr data-job-id="(\d+)"', by_method) == [str(eat)]
    by_status = ui.client.get("/ui/jobs?status=queued", headers=ui.auth).text
    assert re.findall(r'<tr data-job-id="(\d+)"', by_status) == [str(queued)]
    by_kind = ui.client.get("/ui/jobs?kind=train&status=succeeded,failed", headers=ui.auth).text
    assert re.findall(r'<tr data-job-id="(\d+)"', by_kind) == [str(eat), str(ramp)]
    assert ui.client.get("/ui/jobs?status=done", headers=ui.auth).status_code == 422
    # The live refresh fetches the same rows under the same filters.
    data = page_data(by_method)
    assert data["fragment"] == "/ui/fragments/jobs?method=eat"
    assert ui.client.get(data["fragment"], headers=ui.auth).text.count("<tr data-job-id=") == 1


def test_the_job_page_shows_results_checks_warnings_curves_and_epochs(ui: Ui) -> None:
    warning = "l2: the black-box Square attack fooled 2 of 50 points the white-box suite left robust"
    job_id = recorded_job(ui, clean=0.9, linf=0.41, l2=0.52, l1=0.33, union=0.275, warnings=[warning])
    (ui.settings.job_dir(job_id)).mkdir(parents=True)
    (ui.settings.job_dir(job_id) / "metrics.json").write_text('{"clean": 0.9}')
    r = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth)
    assert r.status_code == 200
    text = r.text
    results = re.search(r'<table class="grid results" id="results">.*?</table>', text, re.S).group(0)
    for value in ("standard", "90.0%", "41.0%", "52.0%", "33.0%", "27.5%", "fp32", "l_inf=0.3 l_2=2 l_1=10"):
        assert value in results, value
    job = ui.client.get(f"/v1/jobs/{job_id}", headers=ui.auth).json()
    assert job["warnings"] == result_warnings(job["metrics"]) == [warning]
    assert html.escape(warning) in text and "failed" in text
    checks = re.search(r'<table class="grid checks" id="checks">.*?</table>', text, re.S).group(0)
    assert checks.count("<tr class=") == 3 + 1 + 1 + 1  # 3 curves, iterations, square, gradients
    assert '<tr class="failed" data-status="failed">' in checks and "black-box Square" in checks
    # The Wilson intervals of 180 / 200 and 55 / 200 points (computed by hand from the score formula).
    assert "[85.1, 93.4]" in results and "[21.8, 34.1]" in results
    assert job["intervals"]["clean"] == pytest.approx([0.85059, 0.93433], abs=1e-5)
    assert f'href="{job["ray_dashboard_url"]}"' in text and job["ray_dashboard_url"].startswith("http://ray.example")
    assert "epoch 2 &lt;done&gt;" in text  # logs are escaped
    assert f'href="/ui/jobs/{job_id}/artifacts/metrics.json"' in text
    assert "monitor suite, an upper bound" in text

    data = page_data(text)
    assert data["status"] == "succeeded" and data["terminal"] is True
    assert data["epochs"]["epochs"] == [1, 2]
    assert data["epochs"]["accuracy"]["union"] == [0.1, 0.2]
    assert data["epochs"]["accuracy"]["clean"] == [0.5, 0.7]
    assert data["epochs"]["losses"] == {"ce": [2.1, 1.4], "pairing": [0.3, 0.2]}
    assert data["epochs"]["upper_bound"] is True
    curves = {c["norm"]: c for c in data["curves"]}
    assert list(curves) == ["linf", "l2", "l1"]
    recorded = job["metrics"]["checks"]["curves"]
    for norm in curves:
        assert curves[norm]["radius"] == recorded[norm]["radius"]
        assert curves[norm]["accuracy"] == recorded[norm]["accuracy"]
    # The live endpoint serves the same numbers the page was drawn from.
    live = ui.client.get(data["live_url"], headers=ui.auth).json()
    assert live["epochs"] == data["epochs"] and live["status"] == "succeeded"


def test_the_job_page_shows_the_gradient_cosine_of_a_gradient_projected_run(ui: Ui) -> None:
    job_id = ui.submit(TRAIN)
    first = epoch_report(1, clean=0.5, union=0.1, ce=2.1, pairing=0.3) | {"grad_cosine": 0.25,
                                                                          "grad_angle_deg": 75.52}
    second = epoch_report(2, clean=0.7, union=0.2, ce=1.4, pairing=0.2) | {"grad_cosine": -0.125,
                                                                           "grad_angle_deg": 97.18}
    ui.run(job_id, events=[{"type": "metrics", "data": first}, {"type": "metrics", "data": second}])
    text = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text
    table = re.search(r'<table class="grid" id="gradients">.*?</table>', text, re.S).group(0)
    assert re.findall(r'<td class="num">([^<]*)</td>', table) == ["+0.250", "-0.125", "76°", "97°"]
    assert 'id="epoch-gradients"' in text
    data = page_data(text)
    assert data["epochs"]["grad_cosine"] == [0.25, -0.125] and data["epochs"]["has_gradients"] is True
    assert data["epochs"]["grad_angle_deg"] == [75.52, 97.18]
    live = ui.client.get(data["live_url"], headers=ui.auth).json()
    assert live["epochs"]["grad_cosine"] == [0.25, -0.125]

    # A run without gradient projection (no cosine in its reports) gets neither table nor chart.
    plain = recorded_job(ui, clean=0.9, linf=0.41, l2=0.52, l1=0.33, union=0.275)
    text = ui.client.get(f"/ui/jobs/{plain}", headers=ui.auth).text
    assert 'id="gradients"' not in text and 'id="epoch-gradients"' not in text
    assert page_data(text)["epochs"]["has_gradients"] is False


def test_an_undecided_check_is_never_a_tick(ui: Ui) -> None:
    job_id = recorded_job(ui, clean=0.9, linf=0.41, l2=0.52, l1=0.33, union=0.275, n_checks=10)
    text = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text
    checks = re.search(r'<table class="grid checks" id="checks">.*?</table>', text, re.S).group(0)
    rows = re.findall(r'<tr class="(\w+)" data-status="\w+">(.*?)</tr>', checks, re.S)
    assert [status for status, _ in rows].count("inconclusive") == 5  # 3 curves, iterations, square
    assert all("✓" not in row for status, row in rows if status != "passed")
    assert [status for status, row in rows if "✓" in row] == ["passed"]  # only the decided gradient check
    assert "checks inconclusive" in text and "only 10 relevant point(s)" in text
    job = ui.client.get(f"/v1/jobs/{job_id}", headers=ui.auth).json()
    assert job["notes"] == ["linf iterations: only 10 relevant point(s)"] and job["warnings"] == []


def test_legacy_checks_get_no_tick(ui: Ui) -> None:
    square = {"linf": {"n": 2, "found": 0, "passed": True}}
    legacy = {"n": 20, "passed": True, "warnings": [], "square": square}
    job_id = recorded_job(ui, clean=0.9, linf=0.4, l2=0.5, l1=0.3, union=0.2, checks=legacy)
    text = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text
    checks = re.search(r'<table class="grid checks" id="checks">.*?</table>', text, re.S).group(0)
    assert "✓" not in checks and 'data-status="legacy"' in checks
    assert "legacy checks on 20 points" in text


def test_a_running_job_page_is_live_and_a_retried_epoch_replaces_the_earlier_one(ui: Ui) -> None:
    job_id = ui.submit(TRAIN)
    ui.run(job_id, events=[
        {"type": "progress", "data": {"step": 1, "total_steps": 4, "fraction": 0.25, "phase": "train"}},
        {"type": "metrics", "data": epoch_report(1, clean=0.5, union=0.1, ce=2.1, pairing=0.3)},
    ])
    data = page_data(ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text)
    assert data["terminal"] is False and data["progress"] == {"fraction": 0.25, "label": "train 1/4"}
    with ui.sessions()() as s:
        event_store.add_events(s, job_id, [
            {"seq": 5, "type": "metrics",
             "data": epoch_report(1, clean=0.55, union=0.15, ce=2.0, pairing=0.3)},
            {"seq": 6, "type": "progress",
             "data": {"step": 3, "total_steps": 4, "fraction": 0.75, "phase": "train"}},
        ])
    live = ui.client.get(data["live_url"], headers=ui.auth).json()
    assert live["progress"]["fraction"] == 0.75
    assert live["epochs"]["epochs"] == [1] and live["epochs"]["accuracy"]["union"] == [0.15]


def test_cancel_and_retry_buttons_change_the_job_and_need_the_csrf_token_with_a_cookie(ui: Ui) -> None:
    job_id = ui.submit(TRAIN)
    csrf = ui.login()
    page = ui.client.get(f"/ui/jobs/{job_id}").text
    assert 'id="cancel"' in page and 'id="retry"' not in page
    assert ui.client.post(f"/ui/jobs/{job_id}/cancel", data={}).status_code == 403
    assert ui.client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": "0" * 64}).status_code == 403
    assert ui.client.get(f"/v1/jobs/{job_id}", headers=ui.auth).json()["status"] == "queued"

    r = ui.client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ui/jobs/{job_id}"
    assert ui.client.get(f"/v1/jobs/{job_id}", headers=ui.auth).json()["status"] == "cancelled"
    again = ui.client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert again.status_code == 409 and "already finished with status cancelled" in again.text
    assert 'id="retry"' in again.text and 'id="cancel"' not in again.text

    # A bearer header is not sent by a browser on its own: no CSRF token needed.
    fresh = ui.client.__class__(ui.app)
    r = fresh.post(f"/ui/jobs/{job_id}/retry", headers=ui.auth, follow_redirects=False)
    assert r.status_code == 303
    job = ui.client.get(f"/v1/jobs/{job_id}", headers=ui.auth).json()
    assert job["status"] == "queued" and job["attempt"] == 2


def test_artifacts_download_from_the_page_and_never_leave_the_job_directory(ui: Ui) -> None:
    job_id = ui.submit(TRAIN)
    job_dir = ui.settings.job_dir(job_id)
    (job_dir / "checkpoint").mkdir(parents=True)
    (job_dir / "checkpoint" / "model.safetensors").write_bytes(b"\x00weights")
    (job_dir.parent / "secret.txt").write_text("other job's")
    ok = ui.client.get(f"/ui/jobs/{job_id}/artifacts/checkpoint/model.safetensors", headers=ui.auth)
    assert ok.status_code == 200 and ok.content == b"\x00weights"
    assert "attachment" in ok.headers["content-disposition"]
    for name in ("../secret.txt", "checkpoint/../../secret.txt"):
        r = ui.client.get(f"/ui/jobs/{job_id}/artifacts/{name}", headers=ui.auth)
        assert r.status_code in (400, 404) and "other job's" not in r.text, name
    assert ui.client.get(f"/ui/jobs/{job_id}/artifacts/nope.bin", headers=ui.auth).status_code == 404


def test_the_compare_page_puts_jobs_side_by_side(ui: Ui) -> None:
    ramp = recorded_job(ui, clean=0.9, linf=0.41, l2=0.52, l1=0.33, union=0.275)
    eat = recorded_job(ui, TRAIN | {"method": "eat"}, clean=0.8, linf=0.3, l2=0.4, l1=0.2, union=0.125)
    text = ui.client.get(f"/ui/compare?ids={ramp},{eat},{ramp}&ids=4242", headers=ui.auth).text
    table = re.search(r'<table class="grid results" id="compare-table">.*?</table>', text, re.S).group(0)
    rows = re.findall(r'<tr data-job-id="(\d+)">(.*?)</tr>', table, re.S)
    assert [int(i) for i, _ in rows] == [ramp, eat]
    assert all(v in rows[0][1] for v in (f"#{ramp} ramp", "90.0%", "41.0%", "52.0%", "33.0%", "27.5%"))
    assert all(v in rows[1][1] for v in (f"#{eat} eat", "80.0%", "30.0%", "40.0%", "20.0%", "12.5%"))
    assert f"#{ramp} ramp: no per-sample flags, so no paired test" in html.unescape(text)
    assert "Not found: 4242" in text
    data = page_data(text)
    linf = next(c for c in data["curves"] if c["norm"] == "linf")
    assert [d["label"] for d in linf["datasets"]] == [f"#{ramp} ramp", f"#{eat} eat"]
    assert linf["labels"] == ["0", "0.15", "0.3", "0.6", "1"]
    assert linf["datasets"][0]["data"] == [0.9, 0.41, 0.205, 0.41 / 3, 0.0]
    assert [e["union"] for e in data["epochs"]] == [[0.1, 0.2], [0.1, 0.2]]
    assert ui.client.get("/ui/compare?ids=1;drop", headers=ui.auth).status_code == 422


def test_the_compare_page_tests_paired_differences(ui: Ui) -> None:
    # 200 shared points: RAMP right on 20 points E-AT gets wrong, E-AT right on 8 RAMP gets wrong.
    ramp_union = [True] * 45 + [False] * 155
    eat_union = [True] * 25 + [False] * 20 + [True] * 8 + [False] * 147
    ramp = recorded_job(ui, clean=0.9, linf=0.41, l2=0.52, l1=0.33, union=0.275, union_flags=ramp_union)
    eat = recorded_job(ui, TRAIN | {"method": "eat"}, clean=0.8, linf=0.3, l2=0.4, l1=0.2, union=0.15,
                       union_flags=eat_union)
    text = ui.client.get(f"/ui/compare?ids={ramp},{eat}", headers=ui.auth).text
    pairs = re.search(r'<table class="grid pairs" id="pairs">.*?</table>', text, re.S).group(0)
    union = re.search(r'<tr class="(\w+(?:-\w+)?)" data-metric="union">(.*?)</tr>', pairs, re.S)
    assert union.group(1) == "significant"
    p = mcnemar_exact(20, 8)  # 0.036
    for value in (f"#{ramp} ramp", f"#{eat} eat", "+6.0 pts", ">20<", ">8<", ">200<", "p = 0.036"):
        assert value in union.group(2), value
    clean = re.search(r'<tr class="([\w-]+)" data-metric="clean">(.*?)</tr>', pairs, re.S)
    assert clean.group(1) == "not-significant"  # both right on all 200 points in the flags
    # no point differs: the test could not have decided, and the page says so instead of "no difference"
    assert "inconclusive: 0 discordant points cannot reach p &lt; 0.05" in clean.group(2)
    assert "not significant" not in clean.group(2)
    api = ui.client.get(f"/v1/compare?ids={ramp},{eat}", headers=ui.auth).json()
    row = next(r for r in api["pairs"] if r["metric"] == "union")
    assert row == row | {"a": f"#{ramp} ramp", "b": f"#{eat} eat", "only_a": 20, "only_b": 8, "n": 200,
                         "significant": True, "decidable": True}
    assert next(r for r in api["pairs"] if r["metric"] == "clean")["decidable"] is False
    assert row["p"] == pytest.approx(p) and api["comparisons"] == 2 and api["notes"] == []


def test_the_sweep_page_shows_trials_the_heat_map_and_the_best_trial(ui: Ui) -> None:
    sweep = {"kind": "sweep", "base": TRAIN | {"monitor_n": 16},
             "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}, "epsilons.l1": {"grid": [8, 12]}},
             "metric": "union", "mode": "max"}
    job_id = ui.submit(sweep)
    listing = ui.client.get(f"/v1/jobs/{job_id}/trials", headers=ui.auth).json()
    unions = [0.1, 0.3, 0.25, 0.2]
    events: list[dict[str, Any]] = [{"type": "trial", "data": {"event": "sweep_start", "trials": [
        {"trial_id": t["trial_id"], "index": t["index"], "config": t["config"]} for t in listing["trials"]]}}]
    for t, union in zip(listing["trials"], unions, strict=True):
        tid = t["trial_id"]
        final = {"clean": 0.8, "linf": 0.4, "l2": 0.5, "l1": 0.3, "union": union, "suite": "monitor",
                 "upper_bound": True}
        events += [
            {"type": "trial", "data": {"event": "trial_start", "trial_id": tid}},
            {"type": "trial", "data": {"event": "trial_result", "trial_id": tid, "epoch": 1,
                                       "metrics": {"epoch": 1, "union": union, "clean": 0.8},
                                       "checkpoint": f"trials/{tid}/checkpoint"}},
            {"type": "trial", "data": {"event": "trial_end", "trial_id": tid, "status": "succeeded",
                                       "final": final, "checkpoint": f"trials/{tid}/checkpoint"}},
        ]
    ui.run(job_id, events=events)
    text = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text
    api = ui.client.get(f"/v1/jobs/{job_id}/trials", headers=ui.auth).json()
    assert api["best_trial_id"] == "trial_0001"
    trials = re.search(r'<table class="grid trials" id="trials">.*?</table>', text, re.S).group(0)
    rows = dict(re.findall(r'<tr data-trial="(trial_\d+)" class="(best|)">', trials))
    assert rows == {"trial_0000": "", "trial_0001": "best", "trial_0002": "", "trial_0003": ""}
    assert "ramp.lambda" in trials and "eps_l1" in trials and "30.0%" in trials
    assert f'href="/ui/jobs/{job_id}/artifacts/trials/trial_0002/checkpoint/model.safetensors"' in trials
    assert f"/ui/submit?kind=finetune&amp;job_id={job_id}&amp;trial=trial_0002" in trials
    heat = page_data(text)["heatmap"]
    assert heat["y_key"] == "ramp.lambda" and heat["x_key"] == "eps_l1"
    assert heat["y"] == ["0.5", "5"] and heat["x"] == ["8", "12"]
    cells = {(c["y"], c["x"]): c for c in heat["cells"]}
    assert {k: c["v"] for k, c in cells.items()} == {("0.5", "8"): 0.1, ("0.5", "12"): 0.3,
                                                      ("5", "8"): 0.25, ("5", "12"): 0.2}
    assert [k for k, c in cells.items() if c["best"]] == [("0.5", "12")]
    assert all(c["upper_bound"] for c in cells.values()) and "an upper bound" in heat["label"]
    fragment = ui.client.get(f"/ui/fragments/jobs/{job_id}/trials", headers=ui.auth)
    assert fragment.status_code == 200 and fragment.text.count("<tr data-trial=") == 4

    prefill = ui.client.get(f"/ui/submit?kind=finetune&job_id={job_id}&trial=trial_0002",
                            headers=ui.auth).text
    spec = json.loads(html.unescape(re.search(r'<textarea[^>]*>(.*?)</textarea>', prefill, re.S).group(1)))
    # From the trial's own resolved spec (the sweep's base leaves defaults out).
    assert spec == {"kind": "finetune", "method": "ramp", "dataset": "mnist-5k", "model": "small-cnn",
                    "epochs": 1, "init_from": {"job_id": job_id, "trial": "trial_0002"}}
    missing = ui.client.get(f"/ui/submit?kind=eval&job_id={job_id}&trial=trial_9", headers=ui.auth)
    assert missing.status_code == 404 and "has no trial" in missing.text


def test_the_submit_form_creates_a_job_or_names_the_wrong_field(ui: Ui) -> None:
    csrf = ui.login()
    bad = ui.client.post("/ui/submit", data={"csrf": csrf, "spec": json.dumps(TRAIN | {"method": "rmap"})})
    assert bad.status_code == 422 and "body.method" in bad.text and "unknown method" in bad.text
    assert "rmap" in bad.text  # the text is kept for fixing
    broken = ui.client.post("/ui/submit", data={"csrf": csrf, "spec": "{"})
    assert broken.status_code == 400 and "invalid JSON" in broken.text
    assert ui.client.post("/ui/submit", data={"spec": json.dumps(TRAIN)}).status_code == 403
    r = ui.client.post("/ui/submit", data={"csrf": csrf, "spec": json.dumps(TRAIN)}, follow_redirects=False)
    assert r.status_code == 303
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    job = ui.client.get(f"/v1/jobs/{job_id}", headers=ui.auth).json()
    assert job["status"] == "queued" and job["spec"]["method"] == "ramp" and job["spec"]["max_steps"] == 4


def test_the_pages_load_only_the_vendored_libraries_of_the_noted_versions(ui: Ui) -> None:
    job_id = recorded_job(ui, clean=0.9, linf=0.41, l2=0.52, l1=0.33, union=0.275)
    text = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text
    sources = re.findall(r'<script src="([^"]+)"', text)
    assert sources == ["/ui/static/vendor/chart.umd.min.js", "/ui/static/vendor/chartjs-chart-matrix.min.js",
                       "/ui/static/ui.js"]
    readme = (VENDOR / "README.md").read_text()
    for name, banner, version in (("chart.umd.min.js", "Chart.js", "4.6.1"),
                                  ("chartjs-chart-matrix.min.js", "chartjs-chart-matrix", "3.1.0")):
        served = ui.client.get(f"/ui/static/vendor/{name}")
        assert served.status_code == 200
        assert f"{banner} v{version}" in served.text[:200]
        assert f"| `{name}` |" in readme and f"| {version} |" in readme
        assert f"{hashlib.sha256(served.content).hexdigest()}  {name}" in readme
    assert (VENDOR / "chart.js.LICENSE.md").read_text().startswith("The MIT License")
    assert (VENDOR / "chartjs-chart-matrix.LICENSE").read_text().startswith("MIT License")


def test_progress_labels_and_durations() -> None:
    assert views.fmt_duration(59.6) == "1m 00s" and views.fmt_duration(3725) == "1h 02m"
    assert views.fmt_duration(None) == "-" and views.pct(0.2754) == "27.5%" and views.pct(True) == "-"


class RayLogs:
    """The one method of the Ray backend the log route uses."""

    def __init__(self, text: str | None = None, error: Exception | None = None) -> None:
        self.text, self.error, self.asked = text, error, []

    def logs(self, ray_job_id: str) -> str | None:
        self.asked.append(ray_job_id)
        if self.error is not None:
            raise self.error
        return self.text


def test_the_ray_driver_log_is_fetched_from_ray_without_terminal_colours(ui: Ui) -> None:
    started = ui.submit(TRAIN)
    ui.run(started, ray_job_id="ramp-7-1")
    queued = ui.submit(TRAIN)
    assert "no Ray backend" in ui.client.get(f"/ui/jobs/{started}/log", headers=ui.auth).text
    ui.app.state.backend = RayLogs("\x1b[36m(TrainController)\x1b[0m epoch 1\n")
    assert ui.client.get(f"/ui/jobs/{started}/log", headers=ui.auth).text == "(TrainController) epoch 1\n"
    assert ui.app.state.backend.asked == ["ramp-7-1"]
    assert ui.client.get(f"/ui/jobs/{queued}/log", headers=ui.auth).text == "(no Ray job yet)"
    ui.app.state.backend = RayLogs(error=ConnectionError("head is down"))
    r = ui.client.get(f"/ui/jobs/{started}/log", headers=ui.auth)
    assert r.status_code == 200 and "could not fetch the driver log from Ray" in r.text
    assert "head is down" in r.text
    assert ui.client.get("/ui/jobs/999/log", headers=ui.auth).status_code == 404
    page = page_data(ui.client.get(f"/ui/jobs/{started}", headers=ui.auth).text)
    assert page["log_url"] == f"/ui/jobs/{started}/log"


@pytest.mark.parametrize(("max_retries", "settled"), [(1, False), (0, True)])
def test_a_failed_job_page_keeps_refreshing_while_a_retry_is_owed(
    ui: Ui, max_retries: int, settled: bool
) -> None:
    """The dispatcher queues a failure's next attempt on its next pass: a page drawn in between must
    keep polling (and reload on the new attempt), as the event streams do; no retry left: it stops."""
    job_id = ui.submit(TRAIN | {"max_retries": max_retries})
    ui.run(job_id)
    ui.finish(job_id, {}, status="failed")
    data = page_data(ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text)
    assert data["terminal"] is settled
    live = ui.client.get(data["live_url"], headers=ui.auth).json()
    assert (live["status"], live["terminal"]) == ("failed", settled)
