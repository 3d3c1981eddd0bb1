"""Spec paths are confined to the operator's data roots: the pure policy (with a property test over
``..`` / symlink tricks) and every path field of every job kind over the API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.jobs.paths import PathPolicy, PathRefused, canonical

TRAIN = {"kind": "train", "epochs": 1}


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "data"
    storage = tmp_path / "home" / "artifacts"
    outside = tmp_path / "secret"
    for d in (root / "sub", storage / "jobs" / "1" / "checkpoint", outside):
        d.mkdir(parents=True)
    (outside / "key").write_text("x")
    (root / "escape").symlink_to(outside)  # a link inside a root pointing out of it
    (root / "inner").symlink_to(root / "sub")  # a link that stays inside
    return {"root": root, "storage": storage, "outside": outside}


def test_paths_under_a_root_are_accepted_in_canonical_form(tree: dict[str, Path]) -> None:
    policy = PathPolicy.of([tree["root"]], tree["storage"])
    root = tree["root"]
    assert policy.confine(str(root / "sub" / "x"), "f") == str(canonical(str(root / "sub/x")))
    assert policy.confine(str(root / "inner" / "y"), "f") == str(canonical(str(root / "sub/y")))
    assert policy.confine(str(tree["root"]), "f") == str(canonical(str(tree["root"])))


@pytest.mark.parametrize("how", ["dotdot", "symlink", "absolute", "sibling-prefix", "relative", "storage"])
def test_escapes_are_refused_without_saying_whether_the_file_exists(tree: dict[str, Path], how: str) -> None:
    policy = PathPolicy.of([tree["root"]], tree["storage"])
    root = tree["root"]
    value = {
        "dotdot": f"{root}/sub/../../secret/key",
        "symlink": f"{root}/escape/key",
        "absolute": "/etc/passwd",
        "sibling-prefix": f"{root}-evil/key",  # shares the root's prefix as a string, not as a path
        "relative": "sub/key",
        "storage": str(tree["storage"] / "jobs" / "1" / "checkpoint"),
    }[how]
    with pytest.raises(PathRefused) as info:
        policy.confine(value, "body.data_root")
    assert info.value.field == "body.data_root"
    if how in ("dotdot", "symlink", "absolute", "sibling-prefix"):
        # The same words for an existing and a missing file: no probing through errors.
        missing = value.replace("key", "nope").replace("passwd", "nope")
        with pytest.raises(PathRefused) as other:
            policy.confine(missing, "body.data_root")
        assert str(info.value).replace(value, "") == str(other.value).replace(missing, "")


_segment = st.sampled_from(["..", ".", "sub", "inner", "escape", "x", "", "..."])


@settings(max_examples=300, deadline=None)
@given(segments=st.lists(_segment, max_size=8))
def test_whatever_is_accepted_lies_under_a_root(tmp_path_factory: pytest.TempPathFactory,
                                               segments: list[str]) -> None:
    base = tmp_path_factory.getbasetemp() / "prop"
    root, outside = base / "data", base / "secret"
    if not root.exists():
        (root / "sub").mkdir(parents=True)
        outside.mkdir()
        (root / "escape").symlink_to(outside)
        (root / "inner").symlink_to(root / "sub")
    policy = PathPolicy.of([root], base / "storage")
    value = os.path.join(str(root), *segments)
    try:
        accepted = Path(policy.confine(value, "f"))
    except PathRefused:
        return
    real_root = canonical(str(root))
    assert accepted == real_root or real_root in accepted.parents
    assert canonical(str(accepted)) == accepted  # no symlink or .. left to reinterpret later


# ------------------------------------------------------------------------------------- the API


def _fields(r: Any) -> list[str]:
    assert r.status_code == 422, r.text
    return [item["field"] for item in r.json()["detail"]]


def _post(api: Any, body: dict[str, Any]) -> Any:
    return api.client.post("/v1/jobs", json=body, headers=api.auth)


OUT = "/etc"
CASES = [
    (TRAIN | {"data_root": OUT}, "body.data_root"),
    ({"kind": "finetune", "epochs": 1, "init_from": {"checkpoint": OUT}}, "body.init_from.checkpoint"),
    ({"kind": "eval", "checkpoint": OUT}, "body.checkpoint"),
    ({"kind": "eval", "checkpoint": "/data/ok", "data_file": f"{OUT}/points.npz"}, "body.data_file"),
    (TRAIN | {"method": "ramp", "params": {"ramp.pair": "auto"},
              "pair_models": {"linf": {"checkpoint": OUT}}}, "body.pair_models.linf.checkpoint"),
    ({"kind": "sweep", "base": TRAIN | {"data_root": OUT}, "param_space": {"seed": {"grid": [0, 1]}}},
     "body.base.data_root"),
    ({"kind": "sweep", "base": TRAIN, "param_space": {"data_root": {"grid": ["/data/a", OUT]}}},
     "body.param_space.data_root"),
]


@pytest.mark.parametrize(("body", "field"), CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(CASES)])
def test_every_path_field_outside_the_roots_is_422_naming_it(api: Any, body: dict[str, Any],
                                                             field: str) -> None:
    r = _post(api, body)
    assert field in _fields(r)
    assert "outside the allowed data roots" in r.text and "RAMP_DATA_ROOTS" in r.text


def test_paths_inside_the_roots_are_stored_canonical(api: Any) -> None:
    r = _post(api, TRAIN | {"data_root": "/data/x/../mnist"})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["data_root"] == "/data/mnist"


def test_another_jobs_files_are_named_by_id_not_by_path(api: Any) -> None:
    job = _post(api, TRAIN).json()["id"]
    path = str(api.settings.layout.checkpoint_dir(job))
    by_path = (({"kind": "eval", "checkpoint": path}, "body.checkpoint"),
               ({"kind": "finetune", "init_from": {"checkpoint": path}}, "body.init_from.checkpoint"))
    for body, field in by_path:
        r = _post(api, body)
        assert _fields(r) == [field] and '"job_id": N' in r.json()["detail"][0]["msg"]


def test_data_roots_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service.core.config import Settings

    monkeypatch.setenv("RAMP_DATA_ROOTS", "/srv/data:/srv/models,/mnt/x")
    assert Settings(home=tmp_path).data_roots == [Path("/srv/data"), Path("/srv/models"), Path("/mnt/x")]
    monkeypatch.delenv("RAMP_DATA_ROOTS")
    assert Settings(home=tmp_path).data_roots == [tmp_path / "data"]
