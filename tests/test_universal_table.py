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
