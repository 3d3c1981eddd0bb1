"""A job's page shows its newest 500 log lines, read as such (issue 23): a job that logged more
shows lines 'line 100' .. 'line 599' in order, with metrics interleaved and never mistaken for logs."""

from __future__ import annotations

import re

from ui_support import Ui

from service.ui.routes import MAX_LOG_LINES

LINE = re.compile(r"\[info\] line (\d+)")


def test_the_job_page_shows_the_last_500_log_lines_in_order(ui: Ui) -> None:
    job_id = ui.submit({"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 4})
    events = []
    for i in range(MAX_LOG_LINES + 100):
        events.append({"type": "log", "data": {"message": f"line {i}", "level": "info"}})
        if i % 50 == 0:
            events.append({"type": "progress", "data": {"fraction": i / 1000}})
    ui.run(job_id, events=events)
    r = ui.client.get(f"/ui/jobs/{job_id}", headers=ui.auth)
    assert r.status_code == 200
    shown = [int(n) for n in LINE.findall(r.text)]
    assert shown == list(range(100, MAX_LOG_LINES + 100))
