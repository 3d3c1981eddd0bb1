"""Checkpoint directories: round trip, metadata, weights-only safety, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers import checkpoint
from workers.checkpoint import CheckpointError

META = {
    "model": "small-cnn", "model_args": {}, "dataset": "mnist-5k", "num_classes": 10,
    "in_channels": 1, "input_size": 28, "epsilons": {"linf": 0.3, "l2": 2.0, "l1": 10.0},
    "method": "nt", "spec": {"method": "nt", "seed": 0}, "metrics": {"clean": 0.5},
}


def _model():
    from workers.models import build_model

    torch.manual_seed(1)
    model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=28)
    # make BN buffers non-default so the round trip has to carry them
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 1, 28, 28))
    return model


def test_round_trip_outputs_metadata_eval_mode(tmp_path):
    model = _model().eval()
    x = torch.rand(8, 1, 28, 28)
    expected = model(x)
    path = checkpoint.save(tmp_path / "ck", model, META)
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors"]

    torch.manual_seed(999)
    marker = torch.rand(1)
    torch.manual_seed(999)
    loaded, meta = checkpoint.load(path, device="cpu")
    assert torch.equal(torch.rand(1), marker)  # loading does not consume the caller's random numbers
    assert not loaded.training
    assert torch.equal(loaded(x), expected)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert meta == {"format_version": checkpoint.FORMAT_VERSION, **META}


def test_training_output_dir_resolves_to_its_checkpoint(tmp_path):
    checkpoint.save(tmp_path / checkpoint.SUBDIR, _model(), META)
    _, meta = checkpoint.load(tmp_path)
    assert meta["model"] == "small-cnn"


def test_save_replaces_atomically_and_keeps_train_state(tmp_path):
    model = _model()
    state = {"epoch": 3, "step": 7, "history": [{"epoch": 1, "lr": 0.1}], "t": torch.arange(4)}
    checkpoint.save(tmp_path / "ck", model, META, train_state=state)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    checkpoint.save(tmp_path / "ck", model, META | {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary directories left
    loaded, meta = checkpoint.load(tmp_path / "ck")
    assert meta["epoch"] == 2
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not checkpoint.has_train_state(tmp_path / "ck")  # the new save had none

    checkpoint.save(tmp_path / "ck", model, META, train_state=state)
    back = checkpoint.load_train_state(tmp_path / "ck")
    assert back["history"] == state["history"] and torch.equal(back["t"], state["t"])


def test_update_metadata_merges(tmp_path):
    checkpoint.save(tmp_path, _model(), META)
    meta = checkpoint.update_metadata(tmp_path, {"metrics": {"clean": 0.9}})
    assert meta["metrics"] == {"clean": 0.9} and checkpoint.load_metadata(tmp_path) == meta


def test_save_requires_rebuild_metadata(tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        checkpoint.save(tmp_path, _model(), {k: v for k, v in META.items() if k != "input_size"})


def _mark(path: str) -> None:
    Path(path).write_text("code ran")


class _Malicious:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


def test_malicious_train_state_is_refused(tmp_path):
    checkpoint.save(tmp_path, _model(), META)
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "payload": _Malicious(str(marker))}, tmp_path / checkpoint.TRAIN_STATE_FILE)
    with pytest.raises(CheckpointError, match="refusing"):
        checkpoint.load_train_state(tmp_path)
    assert not marker.exists()
    # the payload is live: a full unpickle would have run it
    torch.load(tmp_path / checkpoint.TRAIN_STATE_FILE, weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_dir", "no such directory"),
        ("not_a_checkpoint", "no meta.json"),
        ("bad_json", "unreadable meta.json"),
        ("old_format", "format version"),
        ("no_weights", "missing model.safetensors"),
        ("garbage_weights", "bad model.safetensors"),
        ("unknown_model", "cannot rebuild model"),
        ("wrong_shape", "bad model.safetensors"),
        ("no_train_state", "not resumable"),
        ("corrupt_train_state", "corrupt train_state.pt"),
    ],
)
def test_broken_checkpoints_raise_checkpoint_error(tmp_path, breakage, message):
    ck = tmp_path / "ck"
    checkpoint.save(ck, _model(), META, train_state={"epoch": 1})
    meta_file = ck / "meta.json"
    load = checkpoint.load
    if breakage == "missing_dir":
        ck = tmp_path / "nope"
    elif breakage == "not_a_checkpoint":
        meta_file.unlink()
    elif breakage == "bad_json":
        meta_file.write_text("{not json")
    elif breakage == "old_format":
        meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"format_version": 0}))
    elif breakage == "no_weights":
        (ck / "model.safetensors").unlink()
    elif breakage == "garbage_weights":
        (ck / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    elif breakage == "unknown_model":
        meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"model": "no-such-net"}))
    elif breakage == "wrong_shape":
        meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"num_classes": 7}))
    elif breakage == "no_train_state":
        (ck / "train_state.pt").unlink()
        load = checkpoint.load_train_state
    elif breakage == "corrupt_train_state":
        (ck / "train_state.pt").write_bytes(b"not a zip file")
        load = checkpoint.load_train_state
    with pytest.raises(CheckpointError, match=message) as info:
        load(ck)
    assert str(ck.name) in str(info.value)
