"""The RAMP paper's gradient-projection ablation on mnist-5k (issue 22, point 2): why RAMP from
scratch lags at small budgets.

    .venv/bin/python scripts/gp_ablation.py                      # 3 seeds x 6 recipes x 15 epochs
    .venv/bin/python scripts/gp_ablation.py --smoke --out /tmp/g --doc /tmp/g.md   # a minute

Recipes (the paper's GP figure, plus RAMP with and without GP), every one with the reproduction's
from-scratch recipe (``scripts/reproduce_mnist.py``'s ``scratch_spec``: SGD, LR 0.05 piecewise,
radii warm-up over 30 % of the steps, 10-step attacks), channels-last (the same function, faster):

- ``AT``: l_inf adversarial training from random weights;
- ``AT-GP``: the same with gradient projection (``gp.enabled``);
- ``AT-pre`` / ``AT-GP-pre``: ``--pre-epochs`` epochs of natural training first, then the same
  adversarial schedule from the naturally trained weights (the paper's "pre");
- ``RAMP`` (GP on: its from-scratch default) and ``RAMP-noGP``.

Per epoch each run's history holds the monitor suite's clean and union accuracy on ``--monitor-n``
held-out points (one APGD-CE run per norm: an upper bound, used only for the convergence curve) and
the cosine between natural and adversarial gradients (GP runs). After the last epoch every run is
evaluated with ``--suite`` (default ``standard+``: APGD-CE + APGD-T with AutoAttack's standard
settings, then FAB-T and Square, the reproduction's ``final_eval``) on the same first ``--eval-n``
test points, rigour checks on ``--checks-n`` of them: those are the table's numbers, with 95 %
Wilson intervals, and the paired exact McNemar tests compare recipes on union accuracy, seed 0 against seed 0.

Convergence (the budget the issue asks for) is read at the full learning rate: the piecewise
schedule divides it by 10 after 7/8 of the steps, and that decay lifts every curve by a few points
at the very end whatever the budget, so a rule over the whole run calls every recipe "still rising".
A recipe has converged at epoch e when its seed-mean monitor union never rises more than
``--plateau`` points above its value at e in any later epoch before the decay, and at least two such
later epochs show it; otherwise "not within E epochs". Whether the budget itself is enough is a
separate, paired question: ``--compare RECIPE=RUN_DIR`` tests a recipe's seed-0 run against the
same recipe trained to a shorter budget (e.g. the reproduction's 15-epoch run) on the same test
points (``--section budget`` writes that check to its own part of the document).

Runs are cached by spec under ``--out`` (an interrupted call continues), two at a time with one
torch thread each.

    .venv/bin/python scripts/gp_ablation.py --section budget --recipes AT,RAMP --epochs 25 \
        --eval-n 500 --out runs/gp-budget \
        --compare AT=results/reproduce-mnist/scratch/at-linf-seed0 \
        --compare RAMP=results/reproduce-mnist/scratch/ramp-seed0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import reproduce_mnist as repro  # noqa: E402

from workers.contract.stats import verdict  # noqa: E402
from workers.training.schedules import MULTISTEP_MILESTONES, PIECEWISE_MILESTONES  # noqa: E402

# name -> (method, gradient projection, natural pre-training first)
RECIPES: dict[str, tuple[str, bool, bool]] = {
    "AT": ("at-linf", False, False),
    "AT-GP": ("at-linf", True, False),
    "AT-pre": ("at-linf", False, True),
    "AT-GP-pre": ("at-linf", True, True),
    "RAMP": ("ramp", True, False),
    "RAMP-noGP": ("ramp", False, False),
}
# --section -> (marker name, heading, figure suffix): each writes its own part of the document
SECTIONS: dict[str, tuple[str, str, str]] = {
    "ablation": ("gp-ablation", "Gradient-projection ablation (from scratch)", ""),
    "budget": ("gp-budget", "Budget check: the same recipes trained longer", "-budget"),
}
# The first LR decay of each schedule, as a share of the run (workers.training.schedules); the
# plateau is read before it. A cyclic schedule never holds its LR, so it has no such window.
FIRST_DECAY: dict[str, float] = {
    "constant": 1.0, "piecewise": PIECEWISE_MILESTONES[0], "multistep": MULTISTEP_MILESTONES[0],
}


def markers(section: str) -> tuple[str, str]:
    name = SECTIONS[section][0]
    return f"<!-- {name}:start (scripts/gp_ablation.py) -->", f"<!-- {name}:end -->"


START, END = markers("ablation")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15, help="adversarial epochs of every recipe")
    ap.add_argument("--pre-epochs", type=int, default=2, help="natural epochs before AT-pre / AT-GP-pre")
    ap.add_argument("--train-n", type=int, default=None, help="train on the first N points only")
    ap.add_argument("--monitor-n", type=int, default=200, help="held-out points of the per-epoch curve")
    ap.add_argument("--eval-n", type=int, default=200, help="test points of the final evaluation")
    ap.add_argument("--suite", choices=repro.RESULT_SUITES, default="standard+",
                    help="the final evaluation's suite (as the reproduction's: standard+ by default)")
    ap.add_argument("--checks-n", type=int, default=100,
                    help="rigour checks (curves, 10x iterations, Square) on this many points of each final "
                         "evaluation; 0: off")
    ap.add_argument("--eps-warmup", type=float, default=0.3)
    ap.add_argument("--plateau", type=float, default=2.0, help="points of later rise still called a plateau")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma list of recipe names")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="two steps per run, 8 points")
    ap.add_argument("--section", choices=SECTIONS, default="ablation",
                    help="the part of --doc to (re)write: the ablation, or the budget check")
    ap.add_argument("--compare", action="append", default=[], metavar="RECIPE=RUN_DIR",
                    help="test the recipe's seed-0 run against this run of the same recipe at "
                         "another budget (same test points); repeatable")
    ap.add_argument("--out", default="runs/gp-ablation")
    ap.add_argument("--doc", default="docs/gp-ablation.md")
    args = ap.parse_args(argv)
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; use {', '.join(RECIPES)}")
    try:
        args.compare = parse_compare(args.compare, args.recipes)
    except ValueError as exc:
        ap.error(str(exc))
    if args.smoke:
        args.seeds, args.epochs, args.pre_epochs, args.max_steps = 1, 2, 1, 2
        args.train_n, args.monitor_n, args.eval_n, args.checks_n = 128, 8, 8, 0
    return args


def parse_compare(items: list[str], recipes: list[str]) -> dict[str, str]:
    """``RECIPE=RUN_DIR`` pairs; each recipe must be one this call trains, named once."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, run_dir = item.partition("=")
        if not sep or not run_dir:
            raise ValueError(f"--compare {item!r}: expected RECIPE=RUN_DIR")
        if name not in recipes:
            raise ValueError(f"--compare {item!r}: recipe {name!r} is not among "
                             f"--recipes {','.join(recipes)}")
        if name in out:
            raise ValueError(f"--compare names {name!r} twice")
        out[name] = run_dir
    return out


def full_lr_epochs(schedule: str, epochs: int) -> int:
    """How many leading epochs run entirely at the base LR (step t of T uses progress (t + 1/2) / T,
    so epoch k is before the first decay d exactly when k <= d * epochs)."""
    if schedule not in FIRST_DECAY:
        raise ValueError(f"no full-LR window for schedule {schedule!r}; known: {', '.join(FIRST_DECAY)}")
    return min(epochs, int(FIRST_DECAY[schedule] * epochs + 1e-9))


def _recipe_args(args: argparse.Namespace, epochs: int) -> argparse.Namespace:
    """The reproduction's ``scratch_spec`` reads these fields. The runs evaluate nothing at their end:
    the final evaluation is the reproduction's ``final_eval`` step, with ``--suite``."""
    return argparse.Namespace(epochs=epochs, train_n=args.train_n, eval_n=0, checks_n=0,
                              eps_warmup=args.eps_warmup, channels_last=True,
                              max_steps=args.max_steps, msd_steps=None)


def pre_spec(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    spec = repro.scratch_spec(_recipe_args(args, args.pre_epochs), "nt", seed)
    return spec | {"eval_n": 0, "monitor_n": 0, "channels_last": True}


def recipe_spec(args: argparse.Namespace, name: str, seed: int, pre_checkpoint: str | None) -> dict[str, Any]:
    """A recipe's resolved spec: the reproduction's from-scratch one, GP set explicitly; "pre"
    recipes start from the natural run's weights but keep the from-scratch schedule (not the
    fine-tuning one ``init_from`` would otherwise default to)."""
    from workers.contract.spec import ResolvedSpec

    method, gp, pre = RECIPES[name]
    spec = repro.scratch_spec(_recipe_args(args, args.epochs), method, seed)
    spec["params"] = dict(spec["params"]) | {"gp.enabled": gp}
    spec |= {"monitor_n": args.monitor_n, "channels_last": True}
    if pre:
        spec["init_from"] = pre_checkpoint
    return ResolvedSpec(**spec).model_dump(mode="json")


def curve(out: Path) -> list[dict[str, Any]]:
    from workers.training.artifacts import read_history

    rows = []
    for h in read_history(out):
        monitor = h.get("monitor") or {}
        rows.append({"epoch": h["epoch"], "clean": monitor.get("clean"), "union": monitor.get("union"),
                     "cosine": h.get("grad_cosine"), "seconds": h.get("seconds")})
    return rows


def converged_epoch(unions: list[float], plateau_points: float, window: int | None = None) -> int | None:
    """The first epoch (1-based) after which the curve never rises more than ``plateau_points``
    (percentage points) above its value there, with at least two later epochs to show it; only the
    first ``window`` epochs count (the full-LR part of the run), when given."""
    unions = unions[:window] if window is not None else unions
    for i, value in enumerate(unions):
        later = unions[i + 1:]
        if len(later) >= 2 and max(later) - value <= plateau_points / 100 + 1e-9:
            return i + 1
    return None


def mean_curve(runs: list[dict[str, Any]], key: str) -> list[float]:
    length = min(len(r["curve"]) for r in runs)
    return [statistics.fmean(r["curve"][e][key] for r in runs) for e in range(length)]


def _run_recipe(name: str, spec: dict[str, Any], out: str, threads: int) -> dict[str, Any]:
    result = repro.run_one(spec, out, threads)
    return result | {"recipe": name, "curve": curve(Path(out))}


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    root = Path(args.out)
    started = time.perf_counter()
    seeds = list(range(args.seeds))
    needs_pre = any(RECIPES[r][2] for r in args.recipes)
    pre_dirs = {seed: root / f"pre-nt-s{seed}" for seed in seeds}
    if needs_pre:
        pre_jobs = [(repro.run_one, (pre_spec(args, s), str(pre_dirs[s]), args.threads)) for s in seeds]
        repro.run_parallel(pre_jobs, args.jobs,
                           lambda r: print(f"natural pre-training seed {r['seed']} done", flush=True))
    jobs = []
    for name in sorted(args.recipes, key=lambda r: -repro.COST.get(RECIPES[r][0], 1)):
        for seed in seeds:
            pre = str(pre_dirs[seed] / "checkpoint") if RECIPES[name][2] else None
            run_dir = str(root / f"{name}-s{seed}")
            jobs.append((_run_recipe, (name, recipe_spec(args, name, seed, pre), run_dir, args.threads)))

    def report(r: dict[str, Any]) -> None:
        if "eval_dir" not in r:
            print(f"{r['recipe']:<10} seed {r['seed']}  trained, {r['seconds_per_epoch']:.1f} s/epoch",
                  flush=True)
            return
        m = r["metrics"]
        print(f"{r['recipe']:<10} seed {r['seed']}  {args.suite} on {m['n']} points: clean {m['clean']:.3f} "
              f"union {m['union']:.3f}, checks {repro.check_status(m)}",
              flush=True)

    trained = repro.run_parallel(jobs, args.jobs, report)
    final = (args.suite, args.eval_n, args.checks_n, args.threads)
    results = repro.run_parallel([(repro.final_eval, (r, *final)) for r in trained], args.jobs, report)
    keys = ("seeds", "epochs", "pre_epochs", "train_n", "monitor_n", "eval_n", "checks_n", "suite",
            "eps_warmup", "plateau", "max_steps", "section", "jobs", "threads")
    settings = {k: getattr(args, k) for k in keys}
    schedule = recipe_spec(args, args.recipes[0], seeds[0], None)["schedule"]
    settings["full_lr_epochs"] = full_lr_epochs(schedule, args.epochs)
    settings["wall_s"] = time.perf_counter() - started
    cached = all(r["cached"] for r in results)
    repro.keep_training_settings(settings, root / "summary.json", cached, ("wall_s", "jobs", "threads"))
    summary = summarise(results, args, settings["full_lr_epochs"])
    budget = budget_tests(summary, args.compare)
    (root / "summary.json").write_text(
        json.dumps({"settings": settings, "recipes": summary, "budget_tests": budget}, indent=2))
    doc = Path(args.doc)
    figure = doc.with_name(doc.stem + SECTIONS[args.section][2] + ".png")
    plot(summary, figure, settings["full_lr_epochs"])
    write_section(doc, render(summary, settings, figure.name, budget), args.section)
    print(f"wrote {doc} ({settings['wall_s'] / 60:.1f} min)")
    return doc


def summarise(results: list[dict[str, Any]], args: argparse.Namespace, window: int) -> list[dict[str, Any]]:
    """One row per recipe; ``window``: the epochs at the full LR, where convergence is read."""
    from workers.contract.stats import wilson_interval
    from workers.evaluation import EvalResult

    out = []
    for name in args.recipes:
        runs = sorted((r for r in results if r["recipe"] == name), key=lambda r: r["seed"])
        unions = mean_curve(runs, "union")
        finals = {k: [r["metrics"][k] for r in runs] for k in ("clean", "union")}
        seed0 = EvalResult.load(Path(runs[0]["eval_dir"]))
        n = len(seed0.clean)
        union_hits = int(seed0.union.sum())
        cosines = mean_curve(runs, "cosine") if all(
            all(e["cosine"] is not None for e in r["curve"]) for r in runs) else []
        out.append({
            "recipe": name, "seeds": [r["seed"] for r in runs], "n": n,
            "clean_curve": mean_curve(runs, "clean"), "union_curve": unions,
            "cosine_curve": cosines, "converged_epoch": converged_epoch(unions, args.plateau, window),
            "decay_gain": unions[-1] - unions[min(window, len(unions)) - 1] if unions else 0.0,
            "final_clean": finals["clean"], "final_union": finals["union"],
            "seed0_union_interval": wilson_interval(union_hits, n),
            "seed0_dir": runs[0]["out"], "seed0_eval": runs[0]["eval_dir"],
            "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in runs),
        })
    return out


def _load_paired(dir_a: str, dir_b: str) -> tuple[Any, Any]:
    """Two runs' final evaluations (a run directory or its evaluation's), refused unless they scored
    the same test points with the same suite."""
    from workers.evaluation import EvalResult

    ra = EvalResult.load(repro.evaluation_dir(dir_a))
    suite = ra.suite if isinstance(ra.suite, str) else None
    rb = EvalResult.load(repro.evaluation_dir(dir_b, suite))
    if ra.points is None or ra.points != rb.points:
        raise ValueError(f"{dir_a} and {dir_b} were not evaluated on the same points "
                         f"(digests {ra.points} / {rb.points}): no paired test")
    if ra.suite != rb.suite:
        raise ValueError(f"{dir_a} and {dir_b} were evaluated with other suites ({ra.suite} / {rb.suite}): "
                         "a paired test would compare the attacks, not the models")
    return ra, rb


def paired_union(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, int, float]:
    """Exact McNemar on seed 0's union flags of two recipes (the same test points)."""
    from workers.contract.stats import discordant, mcnemar_exact

    ra, rb = _load_paired(a["seed0_eval"], b["seed0_eval"])
    only_a, only_b = discordant(ra.union.tolist(), rb.union.tolist())
    return only_a, only_b, mcnemar_exact(only_a, only_b)


def _spec(run_dir: str) -> dict[str, Any]:
    """A run's spec; given one of its evaluation directories (``final-*``), the run's above it."""
    path = Path(run_dir) / repro.SPEC_FILE
    if not path.is_file() and Path(run_dir).name.startswith("final-"):
        path = Path(run_dir).parent / repro.SPEC_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {repro.SPEC_FILE}, not a finished reproduction or ablation run")
    return json.loads(path.read_text())


def budget_tests(summary: list[dict[str, Any]], compare: dict[str, str]) -> list[dict[str, Any]]:
    """Each compared recipe's seed-0 run against the same recipe at another budget: exact McNemar on
    clean and union accuracy over the same points, Holm-adjusted over all these tests. A run of
    another recipe (method, GP, start, warm-up, seed) or on other points is refused."""
    from workers.contract.stats import discordant, holm, mcnemar_exact

    by = {s["recipe"]: s for s in summary}
    recipe_keys = ("method", "dataset", "model", "seed", "eps_warmup", "schedule", "lr", "train_n")
    tests = []
    for name, other_dir in compare.items():
        ours, other = _spec(by[name]["seed0_dir"]), _spec(other_dir)
        mismatch = [k for k in recipe_keys if ours.get(k) != other.get(k)]
        if ours["params"].get("gp.enabled") != other["params"].get("gp.enabled"):
            mismatch.append("gp.enabled")
        if bool(ours.get("init_from")) != bool(other.get("init_from")):
            mismatch.append("init_from")
        if mismatch:
            raise ValueError(f"--compare {name}={other_dir}: not the same recipe "
                             f"({', '.join(mismatch)} differ)")
        run, base = _load_paired(by[name].get("seed0_eval", by[name]["seed0_dir"]), other_dir)
        for metric in ("union", "clean"):
            a, b = getattr(run, metric).tolist(), getattr(base, metric).tolist()
            only_a, only_b = discordant(a, b)
            tests.append({"recipe": name, "metric": metric, "n": len(a), "epochs": ours["epochs"],
                          "other_epochs": other["epochs"], "other_dir": other_dir,
                          "accuracy": sum(a) / len(a), "other_accuracy": sum(b) / len(b),
                          "only": only_a, "only_other": only_b, "p": mcnemar_exact(only_a, only_b)})
    for t, adjusted in zip(tests, holm([t["p"] for t in tests]), strict=True):
        t["p_holm"] = adjusted
    return tests


def budget_line(t: dict[str, Any]) -> str:
    e, o = t["epochs"], t["other_epochs"]
    head = (f"- {t['recipe']} {t['metric']}: {100 * t['accuracy']:.1f} % at {e} epochs, "
            f"{100 * t['other_accuracy']:.1f} % at {o} (n = {t['n']})")
    word = verdict(t["p_holm"], t["only"], t["only_other"])
    return (f"{head}; right only at {e} epochs {t['only']}, only at {o} {t['only_other']}, "
            f"p = {t['p']:.3g}, Holm p = {t['p_holm']:.3g} ({word})")


def render(summary: list[dict[str, Any]], settings: dict[str, Any], plot_name: str,
           budget: list[dict[str, Any]] | None = None) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    start, end = markers(settings["section"])
    window = settings["full_lr_epochs"]
    pre = any(RECIPES[s["recipe"]][2] for s in summary)
    lines = [
        start,
        f"## {SECTIONS[settings['section']][1]}",
        "",
        f"{settings['seeds']} seed{'s' if settings['seeds'] != 1 else ''} x {settings['epochs']} adversarial "
        "epochs per recipe"
        + (f" (AT-pre: {settings['pre_epochs']} natural epochs first)" if pre else "")
        + ", mnist-5k, small-cnn, channels-last, the "
        "reproduction's from-scratch recipe. Curves: the monitor suite on "
        f"{settings['monitor_n']} held-out points (an upper bound, for convergence only), mean over "
        f"seeds. Table: the `{settings.get('suite', 'standard')}` suite on the first {settings['eval_n']} "
        "test points; the interval "
        "is seed 0's 95 % Wilson interval, the spread the seeds'. Converged: the first epoch after which "
        f"the mean monitor union never rose more than {settings['plateau']} points during the "
        f"{window} epochs at the full learning rate (it drops tenfold after that); the LR-drop gain is "
        "the mean monitor union's change from there to the end. Wall time "
        f"{settings['wall_s'] / 60:.0f} min, {settings.get('jobs', 2)} run(s) at a time with "
        f"{settings.get('threads', 1)} torch thread(s) each on {os.cpu_count()} cores "
        f"(`scripts/gp_ablation.py --section {settings['section']}`, {datetime.now(UTC):%Y-%m-%d}).",
        "",
        f"![clean and union accuracy per epoch]({plot_name})",
        "",
        "| recipe | clean (final, per seed) | union (final, per seed) | union seed 0 [95 % CI] "
        f"| converged at epoch (of {window} at full LR) | LR-drop gain (points) | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lo, hi = s["seed0_union_interval"]
        conv = s["converged_epoch"] or f"not within {window}"
        lines.append(f"| {s['recipe']} | {', '.join(pct(v) for v in s['final_clean'])} | "
                     f"{', '.join(pct(v) for v in s['final_union'])} | {pct(s['final_union'][0])} "
                     f"[{pct(lo)}, {pct(hi)}] | {conv} | {100 * s['decay_gain']:+.1f} | "
                     f"{s['seconds_per_epoch']:.0f} |")
    by = {s["recipe"]: s for s in summary}
    pairs = [("AT-GP", "AT"), ("AT-pre", "AT"), ("AT-GP-pre", "AT-GP"), ("RAMP", "RAMP-noGP")]
    tests = [(a, b) for a, b in pairs if a in by and b in by]
    if tests:
        from workers.contract.stats import holm

        lines += ["", "Paired exact McNemar tests on union accuracy (seed 0, the same points; Holm-adjusted "
                  "over these tests, significant only at adjusted p < 0.05):", ""]
        stats = [paired_union(by[a], by[b]) for a, b in tests]
        adjusted = holm([p for _, _, p in stats])
        for (a, b), (only_a, only_b, p), p_holm in zip(tests, stats, adjusted, strict=True):
            lines.append(f"- {a} vs {b}: robust only under {a} {only_a}, only under {b} {only_b}, "
                         f"p = {p:.3g}, Holm p = {p_holm:.3g} ({verdict(p_holm, only_a, only_b)})")
    if budget:
        lines += ["", "Against the same recipe at another budget (seed 0, the same test points, exact "
                  "McNemar; Holm-adjusted over these tests, significant only at adjusted p < 0.05):", ""]
        lines += [budget_line(t) for t in budget]
    lines += ["", end]
    return "\n".join(lines)


def write_section(doc: Path, section: str, name: str = "ablation") -> None:
    """Replace the part between ``name``'s markers (or append it), leaving the rest as written."""
    text = doc.read_text() if doc.is_file() else "# Gradient-projection ablation on mnist-5k\n"
    start_marker, end_marker = markers(name)
    start, end = text.find(start_marker), text.find(end_marker)
    if start >= 0 and end > start:
        text = text[:start] + section + text[end + len(end_marker):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def plot(summary: list[dict[str, Any]], path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key, title in zip(axes, ("clean_curve", "union_curve"), ("clean", "union (monitor, upper bound)"),
                              strict=True):
        for s in summary:
            ax.plot(range(1, len(s[key]) + 1), [100 * v for v in s[key]], marker="o", label=s["recipe"])
        ax.axvline(window + 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel(f"adversarial epoch (dashed: LR / 10 after epoch {window})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% (mean over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
