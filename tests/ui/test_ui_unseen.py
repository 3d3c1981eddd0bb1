"""The unseen suite on the pages: the job page's bar chart per unseen adversary (with the mean,
the unseen union and the corruptions' mean) and the compare page's unseen rows."""

from __future__ import annotations

import re
from typing import Any

from ui_support import Ui, final_metrics

from service.ui.unseen import BAR_WIDTH, unseen_chart
from workers.contract.unseen import UNSEEN_ATTACKS, UNSEEN_UNION

TRAIN = {"kind": "train", "method": "ramp", "epochs": 2, "max_steps": 4}


def unseen_metrics(clean: float, accuracy: dict[str, float], union: float) -> dict[str, Any]:
    """A result with the unseen block as the ``unseen`` suite writes it (docs/evaluation.md)."""
    metrics = final_metrics(clean, 0.4, 0.5, 0.3, 0.25)
    acc = {name: accuracy.get(name, 0.5) for name in UNSEEN_ATTACKS}
    metrics["unseen"] = {
        "accuracy": acc, "mean": sum(acc.values()) / len(acc), "union": union,
        "intervals": {**{k: [v - 0.05, v + 0.05] for k, v in acc.items()},
                      "union": [union - 0.05, union + 0.05]},
        "eps": dict.fromkeys(acc, 2.0), "family": "mnist", "steps": 200,
    }
    metrics[UNSEEN_UNION] = union
    metrics["corruptions"] = {"mean": 0.66, "per_severity": {}, "per_corruption": {}}
    return metrics


def finished(ui: Ui, result: dict[str, Any], spec: dict[str, Any] = TRAIN) -> int:
    job_id = ui.submit(spec)
    ui.run(job_id)
    ui.finish(job_id, result)
    return job_id


def bars(text: str) -> dict[str, str]:
    return dict(re.findall(r'<g class="unseen-bar[^"]*" data-key="([^"]+)" data-accuracy="([^"]*)"', text))


def test_the_job_page_draws_a_bar_per_unseen_adversary(ui: Ui) -> None:
    job_id = finished(ui, unseen_metrics(0.9, {"fog": 0.25, "elastic": 0.75}, 0.125))
    text = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text
    assert 'id="unseen-chart"' in text and "mnist budgets, 200 steps" in text
    drawn = bars(text)
    assert list(drawn) == [*UNSEEN_ATTACKS, "unseen_mean", UNSEEN_UNION, "corruptions_mean"]
    assert drawn["fog"] == "0.25" and drawn[UNSEEN_UNION] == "0.125" and drawn["corruptions_mean"] == "0.66"
    fog = re.search(r'data-key="fog".*?<rect [^>]*width="([\d.]+)"', text, re.S)
    assert float(fog.group(1)) == BAR_WIDTH * 0.25
    table = re.search(r'<table class="grid" id="unseen-table">.*?</table>', text, re.S).group(0)
    assert "25.0%" in table and "12.5%" in table and "[7.5, 17.5]" in table


def test_a_result_without_the_unseen_suite_has_no_chart(ui: Ui) -> None:
    job_id = finished(ui, final_metrics(0.9, 0.4, 0.5, 0.3, 0.25))
    text = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth).text
    assert 'id="unseen-chart"' not in text and "compare-unseen" not in text
    assert unseen_chart(final_metrics(0.9, 0.4, 0.5, 0.3, 0.25)) is None and unseen_chart(None) is None


def test_the_compare_page_shows_the_unseen_rows_of_each_job(ui: Ui) -> None:
    a = finished(ui, unseen_metrics(0.9, {"snow": 0.3}, 0.1))
    b = finished(ui, unseen_metrics(0.8, {"snow": 0.6}, 0.2), TRAIN | {"method": "eat"})
    plain = finished(ui, final_metrics(0.7, 0.4, 0.5, 0.3, 0.25))
    text = ui.client.get(f"/ui/compare?ids={a},{b},{plain}", headers=ui.auth).text
    table = re.search(r'<table class="grid results" id="compare-unseen">.*?</table>', text, re.S).group(0)
    assert f"/ui/jobs/{a}" in table and f"/ui/jobs/{b}" in table and f"/ui/jobs/{plain}" not in table
    rows = dict(re.findall(r'<tr data-key="([^"]+)">(.*?)</tr>', table, re.S))
    assert list(rows) == [*UNSEEN_ATTACKS, "unseen_mean", UNSEEN_UNION, "corruptions_mean"]
    assert re.findall(r"(\d+\.\d)%", rows["snow"]) == ["30.0", "60.0"]
    assert re.findall(r"(\d+\.\d)%", rows[UNSEEN_UNION]) == ["10.0", "20.0"]
    only_plain = ui.client.get(f"/ui/compare?ids={plain}", headers=ui.auth).text
    assert "compare-unseen" not in only_plain
