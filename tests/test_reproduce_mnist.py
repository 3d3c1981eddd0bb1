"""scripts/reproduce_mnist.py: its run selection, the paired tests its verdict rests on, and one
smoke run end to end (intervals on every cell, paired tests, the GP-ablation figure kept)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from script_support import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def repro() -> Any:
    return load_script("reproduce_mnist")


def test_the_default_run_is_the_documented_budget_and_says_why_msd_is_left_out(repro: Any) -> None:
    args = repro.parse_args([])
    assert (args.epochs, args.eval_n, args.channels_last) == (15, 500, True)
    assert "msd" not in args.methods and "msd" in repro.SKIPPED
    assert all(repro.scratch_spec(args, m, 0)["channels_last"] for m in args.methods)
    base = str(ROOT / "demo" / "base-linf-at")
    assert repro.finetune_spec(args, "ramp", 0, base)["channels_last"]
    assert repro.parse_args(["--no-channels-last"]).channels_last is False
    assert repro.parse_args(["--methods", "ramp,at-linf"]).methods == ["at-linf", "ramp"]  # doc order
    # the reported evaluation is a step of its own: strict with the rigour checks on 100 points,
    # and the training runs evaluate nothing at the end (no second, weaker final evaluation)
    assert (args.suite, args.checks_n, args.figure_suite) == ("strict", 100, "standard")
    train = repro.training_args(args)
    assert all(repro.scratch_spec(train, m, 0)["eval_n"] == 0 for m in args.methods)
    assert repro.finetune_spec(train, "ramp", 0, base)["checks_n"] == 0
    assert (args.eval_n, args.checks_n) == (500, 100)  # training_args leaves the caller's args alone
    assert (args.aa_n, args.out) == (25, "results/reproduce-mnist")  # the committed records


def test_only_a_result_suite_may_report(repro: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert repro.parse_args(["--suite", "autoattack"]).suite == "autoattack"
    for weak in ("monitor", "unseen", "bogus"):  # upper bounds / not l_p: never a table's numbers
        with pytest.raises(SystemExit):
            repro.parse_args(["--suite", weak])
        assert "--suite" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["ramp,bogus", ","])
def test_a_bad_finetune_list_is_refused(repro: Any, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        repro.parse_args(["--finetune-methods", value])
    assert "--finetune-methods" in capsys.readouterr().err
    assert repro.parse_args(["--finetune-methods", "ramp,eat"]).finetune_methods == ["eat", "ramp"]


@pytest.mark.parametrize("methods", ["at-linf,bogus", "ramp,eat"])
def test_a_bad_method_list_is_refused(repro: Any, methods: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        repro.parse_args(["--methods", methods])
    assert "--methods" in capsys.readouterr().err


def _flags(hits: int, n: int = 40) -> dict[str, list[bool]]:
    row = [i < hits for i in range(n)]
    return {k: row for k in repro_metrics()}


def repro_metrics() -> tuple[str, ...]:
    return ("clean", "linf", "l2", "l1", "union")


def test_paired_tests_are_exact_holm_adjusted_and_read_both_ways(repro: Any) -> None:
    flags = {"ramp": _flags(30), "max": _flags(5), "eat": _flags(5), "sat": _flags(5), "avg": _flags(7)}
    tests = repro.paired_tests(flags, repro.PAPER_PAIRS)
    by = {(t["a"], t["b"]): t for t in tests}
    ramp_max = by[("ramp", "max")]
    assert (ramp_max["only_a"], ramp_max["only_b"], ramp_max["n"]) == (25, 0, 40)
    assert ramp_max["p"] == pytest.approx(2 * 0.5 ** 25)
    assert ramp_max["p_holm"] == pytest.approx(4 * 2 * 0.5 ** 25)  # the smallest of four p values
    assert repro.relation(ramp_max).startswith("RAMP > MAX (RAMP alone right on 25 points, MAX alone on 0;")
    assert repro.relation(by[("max", "eat")]) == (
        "MAX vs E-AT: inconclusive: 0 discordant points cannot reach p < 0.05 "
        "(MAX alone right on 0 points, E-AT alone on 0)")
    # 2 discordant points: no split of them could be significant, so it is not "no difference"
    assert repro.relation(by[("eat", "avg")]) == (
        "E-AT vs AVG: inconclusive: 2 discordant points cannot reach p < 0.05 "
        "(E-AT alone right on 0 points, AVG alone on 2)")
    # 9 discordant points split 3 : 6: decidable, and not significant
    avg = [3 <= i < 16 for i in range(40)]
    flags_avg = {k: avg for k in repro_metrics()}
    wider = repro.paired_tests({"eat": _flags(10), "avg": flags_avg}, [("eat", "avg")])[0]
    assert (wider["only_a"], wider["only_b"]) == (3, 6) and repro.decidable(wider)
    assert repro.relation(wider).startswith("E-AT vs AVG: no significant difference")
    one = {"a": "ramp", "b": "max", "only_a": 1, "only_b": 11, "p": 0.0063, "p_holm": 0.0063}
    assert repro.relation(one).startswith("MAX > RAMP (RAMP alone right on 1 point, MAX alone on 11;")
    verdict = repro.ordering_verdict(tests)
    assert "significant: RAMP > MAX" in verdict and "Not resolved at this n: MAX vs E-AT" in verdict
    # A significant difference against the paper's direction is called out as such.
    flipped = repro.paired_tests(flags | {"max": _flags(38)}, repro.PAPER_PAIRS)
    assert "MAX > RAMP" in repro.ordering_verdict(flipped)
    assert "the ordering does not hold here" in repro.ordering_verdict(flipped)
    # Methods missing from the run: the ordering is not assessed, nothing is made up.
    partial = repro.paired_tests({"ramp": _flags(1)}, repro.PAPER_PAIRS)
    assert "not assessed" in repro.ordering_verdict(partial)


def test_figure1_is_judged_on_the_final_evaluations_not_on_the_curves(repro: Any) -> None:
    # curves (a cheaper suite, 100 points): l_inf 86 -> 0 for AT-l_1 in epoch 1; their union is an
    # upper bound (13 % for RAMP here) and must not be quoted as a result
    point = lambda epoch, linf, union: {"epoch": epoch, "linf": linf, "l1": union, "union": union}  # noqa: E731
    figure = {"at-l1": [point(0, 0.86, 0.12), point(1, 0.0, 0.0), point(3, 0.0, 0.0)],
              "ramp": [point(0, 0.86, 0.12), point(1, 0.81, 0.13), point(3, 0.85, 0.13)]}
    finals = {"ramp": {"linf": [i < 41 for i in range(50)]}, "at-l1": {"linf": [False] * 50}}
    test = repro.paired_tests(finals, [("ramp", "at-l1")], metrics="linf")[0]
    base = {"method": "at-linf", "linf": [0.83], "l1": [0.006]}
    text = repro.figure1_verdict(base, figure, test)
    assert "l_inf robustness from 83.0 (the AT-l_inf model) to 0.0, RAMP keeps 82.0" in text
    assert "the same 50 points): RAMP > AT-l_1 (RAMP alone right on 41 points" in text
    assert "(l_inf 86 -> 0 % of the curve's points)" in text
    assert "13.0" not in text and "union" not in text
    # the test in the other order reads the same
    other = repro.paired_tests(finals, [("at-l1", "ramp")], metrics="linf")[0]
    assert "to 0.0, RAMP keeps 82.0" in repro.figure1_verdict(base, figure, other)
    assert repro.figure1_verdict(base, figure, None) == ""  # no final evaluation: no claim
    assert repro.curve_gaps(figure, 3) == {"at-l1": [2], "ramp": [2]}
    assert repro.curve_gaps({"ramp": [point(e, 0.8, 0.1) for e in range(4)]}, 3) == {}


def _shifted(hits: dict[str, int], n: int = 60) -> dict[str, list[bool]]:
    """Per-metric flags: the first hits[metric] points right."""
    return {m: [i < hits.get(m, 0) for i in range(n)] for m in repro_metrics()}


def test_the_per_norm_tests_are_one_holm_family_and_name_the_better_method(repro: Any) -> None:
    flags = {"ramp": _shifted({"linf": 50, "l2": 20, "l1": 3}),
             "max": _shifted({"linf": 20, "l2": 22, "l1": 1})}
    tests = repro.paired_tests(flags, [("ramp", "max")], repro.NORMS)
    assert [t["metric"] for t in tests] == ["linf", "l2", "l1"]
    linf = tests[0]
    assert linf["p_holm"] == pytest.approx(3 * 2 * 0.5 ** 30)  # the smallest of three: times three
    table = repro.norm_table(tests)
    assert table[0] == "| A vs B | l_inf | l_2 | l_1 |"
    cells = table[2].split(" | ")
    assert cells[1].startswith("**RAMP** (30 : 0, Holm p ")
    assert cells[2] == cells[3].rstrip(" |") == "inconclusive (2 discordant)"
    verdict = repro.norm_verdict(tests, "From scratch")
    assert "one Holm family of 3 tests" in verdict and "l_inf: RAMP > MAX" in verdict
    assert "l_2: none significant" in verdict and "l_1: none significant" in verdict
    # MAX better on l_2 with enough discordant points: named in its cell, not RAMP
    flipped = repro.paired_tests(flags | {"max": _shifted({"linf": 20, "l2": 40})}, [("ramp", "max")],
                                 repro.NORMS)
    assert repro.norm_table(flipped)[2].split(" | ")[2].startswith("**MAX** (0 : 20")
    assert repro.norm_table([]) == ["(no pair of this table's methods ran)"]


def test_union_at_the_floor_is_called_unable_to_rank_only_when_no_test_could_decide(repro: Any) -> None:
    rows = [{"method": "ramp", "flags": _shifted({"union": 3})},
            {"method": "max", "flags": _shifted({"union": 1})}]
    flags = {r["method"]: r["flags"] for r in rows}
    tests = repro.paired_tests(flags, [("ramp", "max")])
    text = repro.union_floor(rows, tests)
    assert text.startswith("Union accuracy is at most 5.0 % (3 of 60 points, RAMP) for every method here")
    assert "union cannot rank these methods" in text
    # 12 vs 1 union points: 11 discordant, decidable, so union can rank: nothing is said
    rows[0]["flags"] = _shifted({"union": 12})
    assert repro.union_floor(rows, repro.paired_tests({r["method"]: r["flags"] for r in rows},
                                                      [("ramp", "max")])) == ""
    assert repro.union_floor(rows, []) == ""


def test_the_compute_statement_sums_the_records(repro: Any) -> None:
    trained = [{"train_seconds": 1800.0}, {"train_seconds": 1800.0}]
    evaluated = [{"metrics": {"seconds": 3600.0}}, {"metrics": {"seconds": 7200.0}}, {"metrics": {}}]
    compute = repro.compute_summary(trained, evaluated, [{"seconds": 600.0}])
    assert compute == {"runs": 2, "train_hours": 1.0, "eval_hours": 3.0, "crosscheck_minutes": 10.0}
    text = repro.compute_text(compute, 2, 1)
    assert "training 1.0 h over 2 runs" in text and "4.2 h of process time" in text
    assert "about 2.1 h of wall time" in text


def test_every_cell_carries_the_interval_of_its_count(repro: Any) -> None:
    row = {"method": "ramp", **{k: [0.5] for k in repro_metrics()}, "seconds_per_epoch": 1.0,
           "flags": _flags(20)}
    line = repro.table([row])[-1]
    assert line.count("50.0 [35.2, 64.8]") == 5, line  # Wilson 95 % for 20 / 40
    two_seeds = row | {k: [0.5, 0.6] for k in repro_metrics()}
    assert "55.0 ± 7.1 [35.2, 64.8]" in repro.table([two_seeds])[-1]


@pytest.mark.slow
def test_a_smoke_run_writes_intervals_paired_tests_and_keeps_the_other_sections(
    repro: Any, tmp_path: Path
) -> None:
    doc = tmp_path / "results.md"
    kept = "<!-- universal-table:start -->\nkept universal table\n<!-- universal-table:end -->\n"
    doc.write_text("STALE-CONTENT\n" + kept)
    out = tmp_path / "runs"
    repro.main(["--smoke", "--seeds", "1", "--methods", "nt,at-linf,eat,ramp", "--out", str(out),
                "--doc", str(doc), "--finetune-methods", "eat,ramp"])
    text = doc.read_text()
    assert "Not fine-tuned in this run: MAX (left out with --finetune-methods)" in text
    assert text.endswith(kept) and "STALE-CONTENT" not in text
    scratch = text.split("## From scratch", 1)[1].split("##", 1)[0]
    rows = [line for line in scratch.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| NT", "| AT-l_inf", "| E-AT", "| RAMP"]
    assert all(len(re.findall(r"\[\d+\.\d, \d+\.\d\]", r)) == 5 for r in rows), rows
    assert "Not run at this budget: AT-l_1 (left out with --methods)" in text
    assert "MSD (100 MSD iterations per step" in text
    # SAT / AVG / MAX were not run: the ordering is not assessed; fine-tuning and Figure 1 are tested.
    assert "not assessed" in text
    assert re.search(r"- RAMP (vs E-AT|> E-AT|< E-AT|.*E-AT)", text.split("## Robust fine-tuning", 1)[1])
    assert re.search(r"Final l_inf robustness \(`strict`, 12 points; .*\), paired: ", text)
    # Figure 1's own AT-l_1 run: its final evaluation on l_inf alone, the same points
    fig = out / "figure1" / "at-l1" / "final-strict-n12-checks0-linf"
    assert json.loads((fig / "metrics.json").read_text())["epsilons"] == {"linf": 0.3}
    assert "![GP ablation: clean and union accuracy per epoch](gp-ablation.png)" in text
    verdict = text.split("## Verdict", 1)[1].split("##", 1)[0]
    assert "cross-check" in verdict or "over-states" in verdict
    assert "(off in this run: `--checks-n 0`)" in text and "| scratch/RAMP seed 0 | " in text
    assert "Every robust accuracy is from the `strict` suite" in text
    # every reported number comes from the final-evaluation step's directory, none from training
    summary = json.loads((out / "summary.json").read_text())
    for run in summary["scratch"] + summary["finetune"]:
        assert run["eval_dir"] == str(Path(run["out"]) / "final-strict-n12-checks0")
        assert run["metrics"]["suite"] == "strict" and run["metrics"]["n"] == 12
        assert json.loads((Path(run["out"]) / "metrics.json").read_text())["n"] == 0  # training: none
    assert {c["suite"] for c in summary["crosscheck"]} == {"strict"}
    # Figure 1's curves: the cheaper figure suite, said so; its paired test reads the final evaluation
    assert (out / "figure1" / "at-l1" / "curve-standard" / "epoch-1.json").is_file()
    assert "Seed 0, the `standard` suite on the first 8 test points" in text
    assert "the paired test below reads the final evaluation (`strict`)" in text
    assert "| method | epoch | l_inf | l_1 ‡ | union ‡ |" in text  # the curves' l_1 / union: upper bounds
    assert "Figure 1: fine-tuning the l_inf-AT model with l_1 examples alone takes" in verdict
    assert summary["settings"]["channels_last"] is True
    # a re-render from the cache trains nothing and keeps the training call's wall time
    repro.main(["--smoke", "--seeds", "1", "--methods", "nt,at-linf,eat,ramp", "--out", str(out),
                "--doc", str(doc), "--finetune-methods", "eat,ramp"])
    again = json.loads((out / "summary.json").read_text())["settings"]
    assert again["wall_minutes"] == summary["settings"]["wall_minutes"]
    assert [t["metric"] for t in summary["paired_tests"]["figure1"]] == ["linf"]
    assert {t["metric"] for t in summary["paired_tests"]["scratch_norms"]} <= {"linf", "l2", "l1"}
    assert "The same pairs norm by norm" in text and "Compute, summed from the records: training" in text
    assert summary["settings"]["compute"]["runs"] == 7  # 4 from scratch, 2 fine-tuned, Figure 1's AT-l_1

    # The records as committed (results/reproduce-mnist/.gitignore): no weights but the base's.
    argv = ["--smoke", "--seeds", "1", "--methods", "nt,at-linf,eat,ramp", "--out", str(out),
            "--doc", str(doc), "--finetune-methods", "eat,ramp"]
    needs, bases = repro.record_needs(repro.parse_args(argv), out)
    missing = [str(f) for files in needs.values() for f in files if not f.is_file()]
    assert not missing, missing  # record_needs describes the layout main writes
    base, nt = out / "scratch" / "at-linf-seed0", out / "scratch" / "nt-seed0"
    assert set(bases) == {base} and {d.name for d in bases[base]} == {"eat-seed0", "ramp-seed0", "at-l1"}
    for weights in out.glob("**/checkpoint/*"):
        if weights.parent.parent != base or weights.name not in ("model.safetensors", "meta.json"):
            weights.unlink()
    assert repro.prune_stale(needs, bases) == []  # everything the document reads is there
    needs[nt][-1].unlink()  # NT's cross-check: an NT without weights cannot make it again
    nt_trained = (nt / "metrics.json").stat().st_mtime_ns
    repro.main(argv)
    assert needs[nt][-1].is_file() and (nt / "metrics.json").stat().st_mtime_ns != nt_trained  # retrained
    assert json.loads((out / "summary.json").read_text())["settings"]["wall_minutes"] != again["wall_minutes"]


def _cross(run: str, ours: dict[str, float], aa: dict[str, float]) -> dict[str, Any]:
    return {"run": run, "n": 50, "ours": {"clean": 1.0, **ours}, "autoattack": {"clean": 1.0, **aa}}


def test_the_verdict_says_where_full_autoattack_finds_the_suite_over_states(repro: Any) -> None:
    same = {"linf": 0.8, "l2": 0.6, "l1": 0.1, "union": 0.1}
    agree = [_cross("scratch/at-linf-seed0", same, same),
             _cross("scratch/avg-seed0", same, same | {"l1": 0.2, "union": 0.2})]  # AA weaker: no excess
    assert repro.crosscheck_excess(agree) == {}
    assert "found no robust accuracy of the `standard` suite above" in repro.crosscheck_verdict(
        agree, 50, "standard")
    # the 2026-12-04 run: FAB-T breaks the l_inf-trained model's l_2 robustness, APGD did not
    masked = [*agree, _cross("finetune/ramp-seed0", same | {"l2": 0.62, "union": 0.12},
                             same | {"l2": 0.14, "union": 0.04})]
    excess = repro.crosscheck_excess(masked)
    assert set(excess) == {"l2", "union"} and excess["l2"][1] == ["finetune/ramp-seed0"]
    assert abs(excess["l2"][0] - 0.48) < 1e-9
    text = repro.crosscheck_verdict(masked, 50, "standard")
    assert text.startswith("**The `standard` suite over-states robustness here.**")
    assert "l_2 by up to 48 points (1 of 3 runs)" in text and "union by up to 8 points" in text
    assert "in l_inf, l_1 it is nowhere lower" in text
    assert "`--suite standard+` here" in text  # points at the next stronger suite
    stronger = repro.crosscheck_verdict(masked, 50, "standard+")
    assert stronger.startswith("**The `standard+` suite over-states") and "`--suite strict`" in stronger
    assert "more than full AutoAttack" in repro.crosscheck_verdict(masked, 50, "strict")
    assert "more than full AutoAttack" in repro.crosscheck_verdict(masked, 50, "autoattack")
    assert "No AutoAttack cross-check ran" in repro.crosscheck_verdict([], 50, "standard+")  # unchecked


def test_every_runs_checks_are_listed_with_what_failed(repro: Any) -> None:
    runs = [
        {"method": "at-linf", "seed": 0, "finetune": False, "metrics": {"checks": {
            "status": "failed", "warnings": ["l2 square: Square fooled 24 of 50 | points"],
            "inconclusive": []}}},
        {"method": "ramp", "seed": 0, "finetune": True, "metrics": {"checks": {
            "status": "inconclusive", "warnings": [], "inconclusive": ["rigour checks off: checks_n = 0"]}}},
        {"method": "nt", "seed": 0, "finetune": False, "metrics": {}},
    ]
    lines = repro.checks_lines(runs)
    assert lines[2] == "| scratch/AT-l_inf seed 0 | failed | l2 square: Square fooled 24 of 50 / points |"
    assert lines[3] == "| finetune/RAMP seed 0 | inconclusive | rigour checks off: checks_n = 0 |"
    assert lines[4] == "| scratch/NT seed 0 | not recorded | - |"


def _record(run: Path, files: list[str], weights: bool = False) -> list[Path]:
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    if weights:
        (run / "checkpoint").mkdir()
        (run / "checkpoint" / "model.safetensors").write_bytes(b"w")
    for name in files:
        (run / name).write_text("{}")
    return [run / "eval.json", run / "cross.json"]


def test_prune_stale_deletes_what_cannot_be_finished_and_everything_trained_from_it(
        repro: Any, tmp_path: Path) -> None:
    kept = tmp_path / "kept"  # no weights, every file the document reads: read, never retrained
    needs = {kept: _record(kept, ["eval.json", "cross.json"])}
    weighted = tmp_path / "weighted"  # weights: the missing cross-check can still be made
    needs[weighted] = _record(weighted, ["eval.json"], weights=True)
    lost = tmp_path / "lost"  # no weights, a file missing: trained again
    needs[lost] = _record(lost, ["eval.json"])
    untrained = tmp_path / "untrained"
    needs[untrained] = [untrained / "eval.json"]
    assert repro.prune_stale(needs, {}) == [lost]
    assert kept.is_dir() and weighted.is_dir() and not lost.exists()

    base, done, todo = tmp_path / "base", tmp_path / "ft-done", tmp_path / "ft-todo"
    needs = {base: _record(base, ["eval.json", "cross.json"]),
             done: _record(done, ["eval.json", "cross.json"]), todo: [todo / "eval.json"]}
    assert repro.prune_stale(needs, {base: [done]}) == []  # the base is only read
    # a dependent still to train needs the base's weights: the base and what came from it go
    assert repro.prune_stale(needs, {base: [done, todo]}) == [base, done]
    base2, dep = tmp_path / "base2", tmp_path / "dep"
    needs = {base2: _record(base2, ["eval.json"]),
             dep: _record(dep, ["eval.json", "cross.json"], weights=True)}
    assert repro.prune_stale(needs, {base2: [dep]}) == [base2, dep]  # a stale base takes its dependents


def _run(method: str, checks: dict[str, Any]) -> dict[str, Any]:
    return {"method": method, "seed": 0, "finetune": False, "metrics": {"checks": checks}}


def test_failed_rigour_checks_mark_cells_as_upper_bounds_and_enter_the_verdict(repro: Any) -> None:
    failed = {"iterations": {"l1": {"status": "failed"}, "linf": {"status": "passed"}},
              "square": {"l2": {"status": "passed"}}, "ce_vs_dlr": {"l2": {"status": "failed"}}}
    assert repro.overstated({"checks": failed}) == {"l1", "union"}  # ce_vs_dlr: CE masked, APGD-T counted
    assert repro.overstated({"checks": {"curves": {"l2": {"status": "failed"}}}}) == {"l2", "union"}
    assert repro.overstated({}) == set()
    row = {"method": "ramp", "seconds_per_epoch": 1.0, "overstated": ["l1", "union"],
           **{m: [0.5] for m in repro.METRICS}, "flags": {m: [True, False] for m in repro.METRICS}}
    lines = repro.table([row])
    cells = lines[2].split(" | ")
    assert [("†" in c) for c in cells[1:6]] == [False, False, False, True, True]
    assert lines[-1].startswith("†: a rigour check of this run failed")
    assert not any("†" in line for line in repro.table([row | {"overstated": []}]))
    runs = [_run("ramp", failed), _run("max", {"iterations": {"l1": {"status": "passed"}}})]
    verdict = repro.checks_verdict(runs, 100)
    assert verdict.startswith("**The rigour checks call 1 of 2 runs' numbers upper bounds**")
    assert "scratch/RAMP seed 0 (l_1, union)" in verdict and "MAX" not in verdict
    assert repro.checks_verdict(runs[1:], 100).startswith("No rigour check (on 100 points per run)")
    assert "were off" in repro.checks_verdict(runs, 0)


def test_the_committed_records_match_the_documented_command(repro: Any) -> None:
    """results/reproduce-mnist as committed: every run's spec is what the default command trains
    (else the next call would delete it and train again), and nothing in it is stale."""
    args = repro.parse_args([])
    out = ROOT / "results" / "reproduce-mnist"
    runs = sorted(p.parent for p in out.glob("*/*/reproduce-spec.json"))
    assert runs, "no committed records"
    train = repro.training_args(args)
    base = out / "scratch" / "at-linf-seed0" / "checkpoint"
    for run in runs:
        kind = run.parent.name
        # Figure 1's own runs are named by method alone: they fine-tune the first seed's base
        method, seed = (run.name, str(args.seeds[0])) if kind == "figure1" else run.name.rsplit("-seed", 1)
        expected = (repro.scratch_spec(train, method, int(seed)) if kind == "scratch"
                    else repro.finetune_spec(train, method, int(seed), str(base.relative_to(ROOT))))
        assert json.loads((run / repro.SPEC_FILE).read_text()) == expected, run
    def committed_weights(run: Path) -> bool:  # what a clone has: weights git does not ignore
        path = run / repro.WEIGHTS
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0
        return path.is_file() and not ignored

    assert repro.stale_runs(*repro.record_needs(args, out), weights=committed_weights) == []
    assert (out / "scratch" / "at-linf-seed0" / repro.WEIGHTS).is_file()  # the fine-tuning base
