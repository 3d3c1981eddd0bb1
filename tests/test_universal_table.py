"""scripts/universal_table.py: the models it trains are the reproduction's recipes, built from its args."""

from __future__ import annotations

from typing import Any

import pytest
from script_support import load_script


@pytest.fixture(scope="module")
def universal() -> Any:
    return load_script("universal_table")


def test_every_row_gets_a_spec_from_the_reproductions_builders(universal: Any) -> None:
    # reproduce_mnist's spec builders read fields this script sets on its own args: a field they
    # start reading must be set here too, or the script fails before training anything
    rows = universal.rows_to_run(universal.parse_args([]))
    specs = {r["key"]: r["spec"] for r in rows if r["spec"] is not None}
    assert "ft-ramp" in specs and "scratch-ramp" in specs
    assert all((s["eval_n"], s["checks_n"], s["channels_last"]) == (0, 0, False) for s in specs.values())
    assert specs["ft-ramp"]["init_from"] and not specs["scratch-ramp"]["init_from"]
    only = universal.rows_to_run(universal.parse_args(["--only", "ft-eat"]))
    assert [r["key"] for r in only] == ["ft-eat"]


def _unseen_run(method: str, group: str, hits: list[int], n: int = 40) -> dict[str, Any]:
    from types import SimpleNamespace

    import numpy as np

    union = np.zeros(n, dtype=bool)
    union[hits] = True
    return {"method": method, "group": group, "label": method.upper(), "spec": {},
            "result": SimpleNamespace(unseen=SimpleNamespace(union=union))}


def test_the_unseen_union_tests_say_inconclusive_when_too_few_points_differ(universal: Any) -> None:
    ramp = _unseen_run("ramp", "fine-tuned", list(range(12)))
    close = _unseen_run("eat", "fine-tuned", list(range(1, 12)) + [20])  # 1 : 1 discordant
    apart = _unseen_run("max", "fine-tuned", list(range(3)) + list(range(20, 26)))  # 9 : 6 discordant
    far = _unseen_run("sat", "fine-tuned", [])  # 12 : 0
    lines = universal.paired_tests([ramp, close, apart, far])
    by = {line.split(" | ")[1]: line for line in lines if " vs " in line}
    assert by["RAMP vs EAT"].endswith("(inconclusive: 2 discordant points cannot reach p < 0.05) |")
    assert by["RAMP vs MAX"].endswith("(not significant) |")
    assert by["RAMP vs SAT"].endswith("(significant) |")
