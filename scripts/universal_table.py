"""The universal-robustness table of docs/results-mnist.md (issue 21): unseen adversaries and
common corruptions on the models of the mnist-5k reproduction.

    .venv/bin/python scripts/universal_table.py --n 100            # writes the section into the doc
    .venv/bin/python scripts/universal_table.py --smoke --out /tmp/u --doc /tmp/u.md   # a minute

Models, every one trained with ``scripts/reproduce_mnist.py``'s recipes (its ``scratch_spec`` and
``finetune_spec``, one seed):
- fine-tuned (the paper's Figure-1 setting): AT-l_1, E-AT, MAX and RAMP fine-tuned from the shipped
  l_inf-AT small-cnn ``demo/base-linf-at/`` with the reproduction's fine-tuning recipe (3 epochs,
  LR 0.05 / 10 at 1/3 and 2/3, RAMP lambda 1.5, no GP), and the base model itself;
- from scratch: AT-l_inf, AT-l_1, E-AT, MAX and RAMP with the reproduction's budget (3 epochs, the
  shared recipe, radii warm-up over 30 % of the steps).

Each model is evaluated with the ``unseen`` suite (the six unseen adversaries at their documented
budgets and 200 iterations, and the 11 corruptions x 5 severities) on the same first ``--n``
mnist-5k test points. The training runs skip the reproduction's final l_p evaluation
(``eval_n = 0``): this table is about unseen threats, and the l_p tables are the reproduction's.

Printed and written: clean accuracy, the corruption average, each unseen adversary's accuracy, their
mean and the unseen union, with 95 % Wilson intervals (the corruption average is a mean over 55
correlated flags per point, not a binomial count: its interval is a seeded percentile bootstrap
over the points instead), exact McNemar tests on the unseen union between each group's models, the
seconds per point of the unseen suite per model and the wall time. Everything is cached under
``--out``: a second call only re-renders (an interrupted call continues). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # reproduce_mnist's recipes are the ones this table is about
sys.path.insert(0, str(HERE.parent))

import reproduce_mnist as repro  # noqa: E402

FINETUNED = ("at-l1", "eat", "max", "ramp")
SCRATCH = ("at-linf", "at-l1", "eat", "max", "ramp")
START = "<!-- universal-table:start (scripts/universal_table.py) -->"
END = "<!-- universal-table:end -->"
BOOTSTRAP = 2000
FINETUNE_TEXT = {True: "the reproduction's length", False: "3 is the reproduction's length, 2 the demo's"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="first N mnist-5k test points (every model)")
    ap.add_argument("--base", default=str(HERE.parent / "demo" / "base-linf-at"),
                    help="the l_inf-AT checkpoint the fine-tuned models start from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3, help="epochs from scratch (the reproduction's budget)")
    ap.add_argument("--finetune-epochs", type=int, default=3,
                    help="fine-tuning epochs (3: the reproduction's recipe; 2: the demo's)")
    ap.add_argument("--eps-warmup", type=float, default=0.3)
    ap.add_argument("--only", default="", help="comma list of row keys to run (e.g. ft-ramp,scratch-eat)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="two steps per run, 8 points, 5 attack steps")
    ap.add_argument("--out", default="runs/universal-mnist")
    ap.add_argument("--doc", default="docs/results-mnist.md")
    args = ap.parse_args(argv)
    # The fields reproduce_mnist's spec builders read.
    args.train_n, args.max_steps, args.eval_n, args.msd_steps, args.steps = None, None, 0, None, None
    args.checks_n = 0  # no final evaluation in these runs (eval_n 0): nothing to check
    args.channels_last = False  # the layout this table's runs were trained in (their cached specs)
    if args.smoke:
        args.n, args.epochs, args.finetune_epochs, args.max_steps = 8, 1, 1, 2
        args.train_n, args.steps = 256, 5
    return args


def rows_to_run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Row key, group, label and how to get the checkpoint (a spec to train, or the base itself)."""
    rows: list[dict[str, Any]] = [{"key": "ft-base", "group": "fine-tuned", "method": "at-linf",
                                   "label": "AT-l_inf base (no fine-tuning)", "spec": None}]
    for method in FINETUNED:
        rows.append({"key": f"ft-{method}", "group": "fine-tuned", "method": method,
                     "label": f"{repro.LABELS[method]} (fine-tuned)",
                     "spec": repro.finetune_spec(args, method, args.seed, args.base)})
    for method in SCRATCH:
        rows.append({"key": f"scratch-{method}", "group": "from scratch", "method": method,
                     "label": f"{repro.LABELS[method]} (scratch)",
                     "spec": repro.scratch_spec(args, method, args.seed)})
    if args.only:
        keep = {k.strip() for k in args.only.split(",")}
        rows = [r for r in rows if r["key"] in keep]
    # Run the cheap, most informative rows first (MAX trains ~3x longer; the base row last): the doc
    # is rewritten after every row, so an interrupted call still leaves the rows it finished.
    first = {"ft-ramp": 0, "ft-eat": 1, "ft-at-l1": 2, "scratch-at-linf": 3, "scratch-at-l1": 4,
             "scratch-eat": 5, "scratch-ramp": 6, "ft-max": 7, "scratch-max": 8, "ft-base": 9}
    return sorted(rows, key=lambda r: first.get(r["key"], 99))


def evaluate_unseen(checkpoint_dir: str, target: Path, n: int, steps: int | None) -> dict[str, Any]:
    """The unseen suite on the first ``n`` test points, cached in ``target`` (metrics + flags)."""
    from workers import checkpoint
    from workers.evaluation import EvalResult, evaluate

    done, cpu_file = target / "metrics.json", target / "cpu-seconds.json"
    if done.is_file():
        result = EvalResult.load(target)
        cpu = json.loads(cpu_file.read_text())["cpu_seconds"] if cpu_file.is_file() else float("nan")
        seconds = json.loads(done.read_text())["seconds"]
        return {"result": result, "seconds": seconds, "cpu": cpu, "cached": True}
    model, _ = checkpoint.load(checkpoint_dir)
    # CPU seconds of this process beside the wall seconds: on a shared box the wall time mostly
    # measures the other work; the CPU time is what the suite costs on an idle core.
    cpu_started = time.process_time()
    result = evaluate(model, "mnist-5k", {}, "unseen", n=n, seed=0, steps=steps)
    cpu = time.process_time() - cpu_started
    result.save(target)
    cpu_file.write_text(json.dumps({"cpu_seconds": cpu}))
    return {"result": result, "seconds": result.seconds, "cpu": cpu, "cached": False}


def bootstrap_interval(per_point: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap over points of the mean of ``per_point`` (seeded)."""
    rng = np.random.default_rng(seed)
    means = per_point[rng.integers(0, len(per_point), size=(BOOTSTRAP, len(per_point)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarise(result: Any) -> dict[str, Any]:
    from workers.contract.stats import wilson_interval
    from workers.contract.unseen import UNSEEN_ATTACKS

    n = len(result.clean)

    def cell(flags: np.ndarray) -> dict[str, Any]:
        k = int(flags.sum())
        return {"k": k, "acc": k / n, "ci": list(wilson_interval(k, n))}

    flags = result.corruptions.flags
    corr = np.stack([flags[name] for name in sorted(flags)])  # (corruption, severity, point)
    per_point = corr.reshape(-1, n).mean(axis=0)
    out = {"n": n, "clean": cell(result.clean),
           "corruptions": {"acc": float(per_point.mean()), "ci": list(bootstrap_interval(per_point))}}
    out |= {name: cell(result.unseen.flags[name]) for name in UNSEEN_ATTACKS}
    out["unseen_mean"] = float(np.mean([out[name]["acc"] for name in UNSEEN_ATTACKS]))
    out["unseen_union"] = cell(result.unseen.union)
    return out


def width_at_half(n: int) -> float:
    """Width in percentage points of the Wilson interval of an accuracy of 50 % on ``n`` points."""
    from workers.contract.stats import wilson_interval

    lo, hi = wilson_interval(n // 2, n)
    return 100 * (hi - lo)


def pct(c: dict[str, Any]) -> str:
    lo, hi = c["ci"]
    return f"{100 * c['acc']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def paired_tests(done: list[dict[str, Any]]) -> list[str]:
    """McNemar on the unseen union: RAMP against every other model of its group (Holm-adjusted
    within the group) -- the paper's claim is about RAMP."""
    from workers.contract.stats import discordant, holm, mcnemar_exact, verdict

    lines = []
    for group in ("fine-tuned", "from scratch"):
        members = [r for r in done if r["group"] == group]
        ramp = [r for r in members if r["method"] == "ramp" and r["spec"] is not None]
        pairs = [(ramp[0], b) for b in members if ramp and b is not ramp[0]]
        if not pairs:
            continue
        stats = []
        for a, b in pairs:
            fa, fb = a["result"].unseen.union, b["result"].unseen.union
            only_a, only_b = discordant(fa.tolist(), fb.tolist())
            stats.append((a, b, only_a, only_b, mcnemar_exact(only_a, only_b)))
        adjusted = holm([s[4] for s in stats])
        for (a, b, only_a, only_b, p), p_holm in zip(stats, adjusted, strict=True):
            diff = 100 * (a["result"].unseen.union.mean() - b["result"].unseen.union.mean())
            lines.append(f"| {group} | {a['label']} vs {b['label']} | {diff:+.0f} | {only_a} / {only_b} | "
                         f"{p:.3g} | {p_holm:.3g} ({verdict(p_holm, only_a, only_b)}) |")
    return lines


def render(done: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    from workers.contract.unseen import UNSEEN_ATTACKS, budgets_for

    eps = budgets_for(28, 28)
    n = settings["n"]
    head = ("| model | clean | corruptions | " + " | ".join(UNSEEN_ATTACKS)
            + " | unseen mean | unseen union | s / point | CPU s / point |")
    lines = [
        START,
        "## Universal robustness: unseen adversaries and common corruptions",
        "",
        f"Generated by `{settings['command']}` on {settings['finished']} (wall time "
        f"{settings['wall_minutes']:.1f} min, {settings['threads']} torch thread, {settings['machine']}; "
        f"{settings['note']}).",
        "",
        f"Accuracy in % on the same first **{n}** mnist-5k test points for every model, with 95 % "
        "intervals in brackets: Wilson intervals for clean, each unseen adversary and the unseen union "
        f"({width_at_half(n):.0f} points wide around 50 % at n = {n}); for the corruption average (11 "
        "corruptions x 5 "
        "severities per point, correlated within a point) a percentile bootstrap over the points. "
        "Unseen adversaries (`docs/evaluation.md`, \"Unseen adversaries\"): 200 iterations each at the "
        "MNIST-like budgets " + ", ".join(f"{a} {eps[a]:g}" for a in UNSEEN_ATTACKS) + "; each attack's "
        "accuracy counts clean correctness; unseen union = correct under all six; unseen mean = the "
        "average of the six. s / point: the unseen suite's wall seconds per test point (corruptions "
        "included) for that model on this machine; CPU s / point: the CPU seconds of the evaluating "
        "process (one thread), what it costs on an idle core.",
        "",
        f"Models (one seed, {settings['seed']}): fine-tuned from the shipped l_inf-AT small-cnn "
        "(`demo/base-linf-at/`, 6 epochs of AT-l_inf) with `scripts/reproduce_mnist.py`'s fine-tuning "
        f"recipe at {settings['finetune_epochs']} epochs ({FINETUNE_TEXT[settings['finetune_epochs'] == 3]}: "
        "LR 0.05, /10 at 1/3 and 2/3 of the steps, weight decay 5e-4, no GP, RAMP lambda 1.5), and trained "
        "from "
        f"scratch with its budget ({settings['epochs']} epochs, {repro.RECIPE_TEXT['shared']}; radii warm-up "
        f"over the first {100 * settings['eps_warmup']:.0f} % of the steps; "
        f"RAMP: {repro.RECIPE_TEXT['ramp']}; "
        f"E-AT: {repro.RECIPE_TEXT['eat']}).",
        "",
        head,
        "|---" * (head.count("|") - 1) + "|",
    ]
    for r in done:
        s = r["summary"]
        cells = [pct(s["clean"]), pct(s["corruptions"]), *(pct(s[a]) for a in UNSEEN_ATTACKS),
                 f"{100 * s['unseen_mean']:.0f}", pct(s["unseen_union"]), f"{r['seconds'] / n:.2f}",
                 f"{r['cpu'] / n:.2f}"]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    tests = paired_tests(done)
    if tests:
        lines += [
            "",
            "Paired tests on the unseen union (exact McNemar on the points only one model got right; "
            "Holm-adjusted within each group; a difference is called significant only at adjusted "
            "p < 0.05):",
            "",
            "| group | pair | difference (points) | only first / only second | p | p (Holm) |",
            "|---|---|---|---|---|---|",
            *tests,
        ]
    per_point = [r["seconds"] / n for r in done]
    cpu_point = [r["cpu"] / n for r in done]
    lines += [
        "",
        f"The unseen suite cost {min(per_point):.2f}-{max(per_point):.2f} wall s per point per model here "
        f"(mean {np.mean(per_point):.2f}; CPU {min(cpu_point):.2f}-{max(cpu_point):.2f}, mean "
        f"{np.mean(cpu_point):.2f}; one torch thread{settings['load_note']}). Training wall seconds per "
        "run: " + ", ".join(f"{r['label']} {r['train_seconds']:.0f}" for r in done if r["train_seconds"])
        + ".",
        END,
    ]
    return "\n".join(lines)


def write_section(doc: Path, section: str) -> None:
    """Put the section into ``doc``, replacing an earlier one (the rest of the doc untouched)."""
    text = doc.read_text() if doc.is_file() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    done: list[dict[str, Any]] = []
    rows = rows_to_run(args)
    order = {row["key"]: i for i, row in enumerate(_table_order(rows))}
    for row in rows:
        run_dir = out / row["key"]
        train_seconds = 0.0
        if row["spec"] is None:
            ckpt = args.base
        else:
            t = time.perf_counter()
            trained = repro.run_one(row["spec"], str(run_dir), args.threads)
            train_seconds = 0.0 if trained["cached"] else time.perf_counter() - t
            ckpt = str(run_dir / "checkpoint")
        ev = evaluate_unseen(ckpt, run_dir / f"unseen-n{args.n}", args.n, args.steps)
        row |= {"result": ev["result"], "seconds": ev["seconds"], "cpu": ev["cpu"],
                "cached_eval": ev["cached"], "train_seconds": train_seconds,
                "summary": summarise(ev["result"])}
        s = row["summary"]
        print(f"{row['label']:32s} clean {s['clean']['acc']:.2f} corruptions {s['corruptions']['acc']:.3f} "
              f"unseen mean {s['unseen_mean']:.3f} union {s['unseen_union']['acc']:.2f}  "
              f"train {train_seconds:.0f} s, unseen {ev['seconds']:.0f} s "
              f"({ev['seconds'] / args.n:.2f} s/point, CPU {ev['cpu'] / args.n:.2f} s/point)"
              f"{' (cached)' if ev['cached'] else ''}", flush=True)
        done.append(row)
        done.sort(key=lambda r: order[r["key"]])
        section = _write(args, argv, done, started, final=len(done) == len(rows))
    print(section)
    print(f"wrote {args.doc} ({(time.perf_counter() - started) / 60:.1f} min)")
    return Path(args.doc)


def _table_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the table shows them: fine-tuned (base first), then from scratch, each in
    FINETUNED / SCRATCH order."""
    rank = {"ft-base": 0} | {f"ft-{m}": 1 + i for i, m in enumerate(FINETUNED)}
    rank |= {f"scratch-{m}": 10 + i for i, m in enumerate(SCRATCH)}
    return sorted(rows, key=lambda r: rank.get(r["key"], 99))


def _write(args: argparse.Namespace, argv: list[str] | None, done: list[dict[str, Any]], started: float,
           final: bool) -> str:
    load = os.getloadavg()[0]
    settings = {
        "n": args.n, "seed": args.seed, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
        "eps_warmup": args.eps_warmup, "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        "command": "python scripts/universal_table.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_minutes": (time.perf_counter() - started) / 60,
        "note": ("cached runs read back, their seconds as first measured"
                 if any(r["cached_eval"] for r in done) else "all runs timed")
        + ("" if final and not args.only else "; PARTIAL: not every model of the table has run"),
        "load_note": f"; load average {load:.1f} at the end",
    }
    section = render(done, settings)
    summary = {"settings": settings, "rows": [{k: v for k, v in r.items() if k not in ("result", "spec")}
                                              for r in done]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_section(Path(args.doc), section)
    return section


if __name__ == "__main__":
    main()
