"""The demo's closing report (``scripts/demo.sh``): per-epoch curves and the Figure-1 verdict.

    .venv/bin/python scripts/demo_report.py --base 4 --l1 3 --eat 2 --ramp 1   # RAMP_URL / RAMP_TOKEN

Prints, from a running service,

1. each fine-tuning job's per-epoch l_inf / l_1 / union from its ``metrics`` events: the monitor
   suite (a cheap check, an upper bound -- labelled so; the results come from the default suite);
2. the verdict on the RAMP paper's Figure-1 effect, decided only by the paired tests of
   ``GET /v1/compare`` (exact McNemar on the same test points, Holm-adjusted over every pair and
   metric the report holds): l_1-only fine-tuning loses l_inf robustness (starting model vs AT-l_1)
   and RAMP keeps it (RAMP vs AT-l_1, and RAMP vs the starting model). A difference that is not
   significant is reported as not shown, whatever its size.

Exits 1 when a job has no result or the jobs cannot be paired; the verdict itself does not change
the exit status (an effect that does not show on some run is a finding, not a failure).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.contract.display import p_text  # noqa: E402  (torch-free)

ROLES = (("l1", "AT-l_1"), ("eat", "E-AT"), ("ramp", "RAMP"))
CURVE_KEYS = (("linf", "l_inf"), ("l1", "l_1"), ("union", "union"))


def _pct(value: Any) -> str:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return f"{100 * value:5.1f}" if number else "    -"


def epoch_table(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Lines of a table: one row per epoch, per label its monitor l_inf / l_1 / union in %.
    A retried epoch's later report replaces the earlier one."""
    by_label = {label: {int(r["epoch"]): r.get("monitor") or {} for r in reports if "epoch" in r}
                for label, reports in histories.items()}
    epochs = sorted({e for rows in by_label.values() for e in rows})
    width = 21
    head = "epoch | " + " | ".join(f"{label:^{width}}" for label in by_label)
    sub = "      | " + " | ".join(f"{' / '.join(name for _, name in CURVE_KEYS):^{width}}" for _ in by_label)
    lines = [head, sub, "-" * len(head)]
    for epoch in epochs:
        cells = []
        for rows in by_label.values():
            monitor = rows.get(epoch, {})
            cells.append(f"{' / '.join(_pct(monitor.get(k)) for k, _ in CURVE_KEYS):^{width}}")
        lines.append(f"{epoch:>5} | " + " | ".join(cells))
    return lines


def _job_tag(name: Any) -> str:
    # The compare report names jobs "#<id> <method or kind>": the id is what identifies them.
    return str(name).split(" ", 1)[0]


def _pair(report: Mapping[str, Any], a: str, b: str, metric: str) -> tuple[Mapping[str, Any], int] | None:
    """The report's pair of jobs ``a`` and ``b`` ("#<id>") on ``metric``, and its sign as (a - b)."""
    for pair in report.get("pairs") or []:
        if pair.get("metric") != metric:
            continue
        tags = (_job_tag(pair.get("a")), _job_tag(pair.get("b")))
        if tags == (a, b):
            return pair, 1
        if tags == (b, a):
            return pair, -1
    return None


def _difference_text(found: tuple[Mapping[str, Any], int], a_label: str, b_label: str) -> str:
    pair, sign = found
    acc_a, acc_b = (pair["accuracy_a"], pair["accuracy_b"])[::sign]
    only_a, only_b = (pair["only_a"], pair["only_b"])[::sign]
    return (f"{a_label} {100 * acc_a:.1f} % vs {b_label} {100 * acc_b:.1f} % "
            f"({only_a} vs {only_b} points only one got right, n = {pair['n']}; "
            f"{p_text(float(pair['p']))}, Holm {p_text(float(pair['p_holm']))})")


def _signed(found: tuple[Mapping[str, Any], int], alpha: float) -> tuple[float, bool]:
    """(a - b, significant after Holm)."""
    pair, sign = found
    return sign * float(pair["difference"]), float(pair["p_holm"]) < alpha


def figure1_verdict(report: Mapping[str, Any], names: Mapping[str, str]) -> list[str]:
    """The Figure-1 claim judged by the paired tests on l_inf. ``names``: role (base, l1, ramp) ->
    the job's tag in the compare report ("#<id>")."""
    alpha = float(report.get("alpha", 0.05))
    base_l1 = _pair(report, names["base"], names["l1"], "linf")
    ramp_l1 = _pair(report, names["ramp"], names["l1"], "linf")
    ramp_base = _pair(report, names["ramp"], names["base"], "linf")
    if base_l1 is None or ramp_l1 is None or ramp_base is None:
        return ["Figure-1 verdict: inconclusive -- the jobs could not be paired (see the notes above)"]
    lines = ["Figure-1 check, l_inf robust accuracy (default suite, paired exact McNemar, Holm-adjusted):",
             "  l_1-only fine-tuning vs the starting model: " + _difference_text(base_l1, "start", "AT-l_1"),
             "  RAMP vs l_1-only fine-tuning:               " + _difference_text(ramp_l1, "RAMP", "AT-l_1"),
             "  RAMP vs the starting model:                 " + _difference_text(ramp_base, "RAMP", "start")]
    lost, lost_sig = _signed(base_l1, alpha)
    kept, kept_sig = _signed(ramp_l1, alpha)
    change, change_sig = _signed(ramp_base, alpha)
    if lost > 0 and lost_sig and kept > 0 and kept_sig:
        tail = ("and stays level with the starting model (no significant difference)" if not change_sig
                else f"though it moves {100 * change:+.1f} points from the starting model (significant)")
        lines.append("Verdict: shown -- l_1-only fine-tuning lost l_inf robustness; RAMP kept significantly "
                     f"more, {tail}.")
    else:
        missing = []
        if not (lost > 0 and lost_sig):
            missing.append("l_1-only fine-tuning did not lose l_inf robustness significantly")
        if not (kept > 0 and kept_sig):
            missing.append("RAMP did not keep significantly more l_inf robustness than l_1-only fine-tuning")
        lines.append("Verdict: not shown on this run -- " + "; ".join(missing) + ".")
    return lines


def _history(client: Any, job_id: int) -> list[dict[str, Any]]:
    return [ev.payload.get("data") or {} for ev in client.follow(job_id) if ev.type == "metrics"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for role in ("base", "l1", "eat", "ramp"):
        ap.add_argument(f"--{role}", type=int, required=True, help=f"job id of the {role} job")
    args = ap.parse_args(argv)

    from rampctl.client import ServiceClient, ServiceError

    try:
        with ServiceClient() as client:
            jobs = {role: client.job(getattr(args, role)) for role in ("base", "l1", "eat", "ramp")}
            unfinished = [f"#{j['id']} is {j['status']}" for j in jobs.values() if not j.get("metrics")]
            if unfinished:
                print("no results to report: " + ", ".join(unfinished), file=sys.stderr)
                return 1
            histories = {label: _history(client, jobs[role]["id"]) for role, label in ROLES}
            report = client.compare([jobs[r]["id"] for r in ("base", "l1", "eat", "ramp")])
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    spec = jobs["ramp"]["spec"]
    print(f"Per epoch, held-out l_inf / l_1 / union in % -- the monitor suite "
          f"({spec.get('monitor_steps')}-step APGD on the first {spec.get('monitor_n')} test points): "
          "an upper bound, for the curve only")
    for line in epoch_table(histories):
        print(line)
    print()
    names = {role: f"#{job['id']}" for role, job in jobs.items()}
    for line in figure1_verdict(report, names):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
