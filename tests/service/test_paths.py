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
    ({"kind": "finetune", "model": "small-cnn", "epochs": 1, "init_from": {"checkpoint": OUT}},
     "body.init_from.checkpoint"),
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
               ({"kind": "finetune", "model": "small-cnn", "init_from": {"checkpoint": path}},
                "body.init_from.checkpoint"))
    for body, field in by_path:
        r = _post(api, body)
        assert _fields(r) == [field] and '"job_id": N' in r.json()["detail"][0]["msg"]


def test_data_roots_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service.core.config import Settings

    monkeypatch.setenv("RAMP_DATA_ROOTS", "/srv/data:/srv/models,/mnt/x")
    assert Settings(home=tmp_path).data_roots == [Path("/srv/data"), Path("/srv/models"), Path("/mnt/x")]
    monkeypatch.delenv("RAMP_DATA_ROOTS")
    assert Settings(home=tmp_path).data_roots == [tmp_path / "data"]


# ------------------------------------------- sweeps: what was checked is what runs (issue 19, 5)


@pytest.fixture
def linked(api: Any) -> dict[str, Path]:
    """Under the api's data root: real/ (a directory), mine -> real (a link the user may name),
    and outside it: theirs/ (what a re-pointed link would open)."""
    root = Path(api.settings.data_roots[-1])
    (root / "real").mkdir(parents=True)
    (root / "mine").symlink_to(root / "real")
    theirs = root.parent / "theirs"
    theirs.mkdir()
    return {"root": root, "real": root / "real", "mine": root / "mine", "theirs": theirs}


def _sweep_over_data_roots(api: Any, *values: str) -> dict[str, Any]:
    body = {"kind": "sweep", "base": TRAIN | {"max_steps": 4},
            "param_space": {"data_root": {"grid": list(values)}, "seed": {"grid": [0, 1]}}}
    r = _post(api, body)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_sweep_stores_the_resolved_paths_it_runs(api: Any, linked: dict[str, Path]) -> None:
    """The check resolved each trial's path but the stored param_space kept what the user typed,
    and the runner expands its trials from that: now param_space, trial configs and trial specs
    all hold the resolved paths -- and the runner's expansion of the stored spec gives them too."""
    from service.jobs.specs import work_spec
    from workers.contract.sweep import SweepSpec

    real = str(canonical(str(linked["real"])))
    job = _sweep_over_data_roots(api, str(linked["mine"]), f"{linked['real']}/../real")
    assert job["spec"]["param_space"]["data_root"] == {"grid": [real, real]}
    trials = api.client.get(f"/v1/jobs/{job['id']}/trials", headers=api.auth).json()["trials"]
    assert {t["config"]["data_root"] for t in trials} == {real}
    assert {t["spec"]["data_root"] for t in trials} == {real}
    runnable = SweepSpec.model_validate(work_spec(job["spec"]))
    assert {t.spec["data_root"] for t in runnable.trials()} == {real}


def test_the_driver_is_told_where_paths_may_lie(api: Any, driver_token: Any) -> None:
    job_id = _post(api, TRAIN).json()["id"]
    auth = {"Authorization": f"Bearer {driver_token(api.app, job_id)}"}
    info = api.client.get(f"/internal/jobs/{job_id}/spec", headers=auth).json()
    policy = api.settings.path_policy
    assert info["path_roots"] == [*map(str, policy.roots), str(policy.storage)]


def test_a_link_re_pointed_after_submission_is_refused_before_anything_opens(
        api: Any, linked: dict[str, Path]) -> None:
    """Submit through the link, then swap what the checked path is for a link out of the roots:
    the stored spec no longer resolves to itself and the driver's re-check refuses it -- for a
    single job's data_root and for a sweep's base and param_space alike."""
    from workers.contract.paths import PathMoved, recheck_paths

    policy = api.settings.path_policy
    roots = [*map(str, policy.roots), str(policy.storage)]
    single = _post(api, TRAIN | {"data_root": str(linked["mine"])}).json()["spec"]
    sweep = _sweep_over_data_roots(api, str(linked["mine"]))["spec"]
    based = _post(api, {"kind": "sweep", "base": TRAIN | {"max_steps": 4, "data_root": str(linked["mine"])},
                        "param_space": {"seed": {"grid": [0, 1]}}}).json()["spec"]
    for spec in (single, sweep, based):
        recheck_paths(spec, roots)  # as submitted: fine
    real = linked["real"]
    real.rename(real.with_name("real-moved"))
    real.symlink_to(linked["theirs"])  # the checked path now leads out of the roots
    for spec, field in ((single, "data_root"), (sweep, "param_space.data_root"), (based, "base.data_root")):
        with pytest.raises(PathMoved, match="now resolves to") as info:
            recheck_paths(spec, roots)
        assert info.value.field == field


def test_paths_outside_the_roots_the_service_names_are_refused_by_the_driver(tmp_path: Path) -> None:
    from workers.contract.paths import PathMoved, recheck_paths

    (tmp_path / "data").mkdir()
    spec = {"kind": "eval", "checkpoint": str(tmp_path / "elsewhere" / "ckpt")}
    with pytest.raises(PathMoved, match="outside the service's data roots"):
        recheck_paths(spec, [str(tmp_path / "data")])
    recheck_paths(spec, None)  # no roots given: the resolution alone is checked
    recheck_paths({"kind": "eval", "checkpoint": str(tmp_path / "data" / "x")}, [str(tmp_path / "data")])


def test_the_driver_fails_the_job_on_a_moved_path_before_running_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_job`` with the service away (nothing answers): the re-check fails the job with the
    reason on disk, and nothing was trained."""
    from workers.contract import outbox
    from workers.jobs import driver
    from workers.jobs.reporter import ServiceClient

    root = tmp_path / "data"
    (root / "real").mkdir(parents=True)
    checked = str(canonical(str(root / "real")))
    (root / "real").rename(root / "moved")
    (root / "real").symlink_to(tmp_path)
    info = {"job_id": 7, "attempt": 1, "kind": "train", "job_dir": str(tmp_path / "storage" / "jobs" / "7"),
            "resume": False, "path_roots": [str(canonical(str(root))), str(tmp_path / "storage")],
            "spec": TRAIN | {"method": "ramp", "data_root": checked}}
    client = ServiceClient("http://127.0.0.1:9", 7, "rampjob_x")
    monkeypatch.setattr(client, "get_spec", lambda **_: info)
    monkeypatch.setattr(client, "post_status", lambda *a, **k: None)
    monkeypatch.setattr(driver, "FINAL_FLUSH_S", 0.2)
    monkeypatch.setattr(driver, "run_train_job", lambda *a, **k: pytest.fail("trained on a moved path"))
    assert driver.run_job(client, tmp_path / "storage") == driver.EXIT_FAILED
    result = outbox.read_result(tmp_path / "storage" / "jobs" / "7", attempt=1)
    assert result is not None and result["status"] == "failed"
    assert "PathMoved" in result["error"] and "data_root" in result["error"]


def test_checkpoints_resolved_from_job_ids_are_stored_canonical(tmp_path: Path) -> None:
    """The storage may sit behind a link (an operator's mount): a fine-tune's init_from resolved
    from a job id is stored resolved too, so the driver's re-check passes for it."""
    from api_support import app_without_ray
    from sqlalchemy import update

    from service.core.config import Settings
    from service.db.models import Job
    from workers.contract.paths import recheck_paths

    home = tmp_path / "home"
    (home / "store").mkdir(parents=True)
    (home / "store-link").symlink_to(home / "store")
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'ramp.db'}", ray_address=None,
                        log_level="WARNING", storage_dir=home / "store-link")
    with app_without_ray(settings) as api:
        src = _post(api, TRAIN).json()["id"]
        with api.sessions()() as s:
            s.execute(update(Job).where(Job.id == src).values(status="succeeded"))
            s.commit()
        r = _post(api, {"kind": "finetune", "model": "small-cnn", "epochs": 1, "init_from": {"job_id": src}})
        assert r.status_code == 201, r.text
        init_from = r.json()["spec"]["init_from"]
        assert init_from == str(canonical(str(api.settings.layout.checkpoint_dir(src))))
        assert "store-link" not in init_from
        policy = api.settings.path_policy
        recheck_paths(r.json()["spec"], [*map(str, policy.roots), str(policy.storage)])
