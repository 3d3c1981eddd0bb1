"""Channels-last and ``torch.compile`` for training: the eager fallback and what reaches a checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.models import build_model
from workers.models.compiled import CompiledOrEager, eager, fast_model


def _net() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small-cnn", num_classes=10, in_channels=1, input_size=(28, 28))


def _x() -> torch.Tensor:
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


class _Fake:
    """What ``torch.compile`` returns in these tests: the eager forward, counted, or an error."""

    def __init__(self, module: nn.Module, error: BaseException | None = None) -> None:
        self.module, self.error, self.calls = module, error, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.module(x)


def test_a_compile_that_raises_at_setup_runs_eagerly(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    model = _net()
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        wrapped = CompiledOrEager(model)
    assert not wrapped.compiled and "no compiler here" in str(wrapped.error)
    assert torch.equal(wrapped(_x()), model(_x()))


def test_a_compiler_error_at_the_first_forward_falls_back_to_eager_for_good(monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    fakes: list[_Fake] = []

    def compile_(module, **kwargs):
        fakes.append(_Fake(module, TorchDynamoException("inductor: C++ compile failed")))
        return fakes[-1]

    monkeypatch.setattr(torch, "compile", compile_)
    model = _net()
    wrapped = CompiledOrEager(model)
    assert wrapped.compiled
    with pytest.warns(RuntimeWarning, match="C\\+\\+ compile failed"):
        out = wrapped(_x())
    assert torch.equal(out, model(_x())) and not wrapped.compiled
    wrapped(_x())
    assert fakes[0].calls == 1  # never tried again


def test_errors_that_are_not_the_compilers_propagate(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kw: _Fake(module, ValueError("bad input shape")))
    wrapped = CompiledOrEager(_net())
    with pytest.raises(ValueError, match="bad input shape"):
        wrapped(_x())
    assert wrapped.compiled


def test_the_wrapper_adds_no_state_and_unwraps(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kw: _Fake(module))
    model = _net()
    wrapped = fast_model(model, compile=True)
    assert eager(wrapped) is model and eager(model) is model
    assert list(wrapped.state_dict()) == [f"module.{k}" for k in model.state_dict()]
    assert len(list(wrapped.parameters())) == len(list(model.parameters()))
    assert fast_model(model) is model


def test_channels_last_converts_in_place_and_computes_the_same():
    model, reference = _net(), _net()
    fast = fast_model(model, channels_last=True)
    assert fast is model and model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(_x()), reference(_x()), rtol=1e-5, atol=1e-5)


def test_a_compiled_channels_last_run_trains_through_the_compiled_form_and_saves_the_eager_model(
    tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from workers import checkpoint
    from workers.contract.spec import TrainSpec
    from workers.training.loop import run_training

    fakes: list[_Fake] = []

    def compile_(module, **kwargs):
        fakes.append(_Fake(module))
        return fakes[-1]

    monkeypatch.setattr(torch, "compile", compile_)
    spec = TrainSpec(method="at-linf", dataset="mnist-5k", model="small-cnn", epochs=1, max_steps=2,
                     batch_size=16, train_n=32, eval_n=0, monitor_n=0, compile=True, channels_last=True,
                     params={"attack.steps_linf": 2})
    run_training(spec.resolve(), tmp_path, device="cpu")
    # per step: APGD's start point and its 2 iterates, then the training forward
    assert len(fakes) == 1 and fakes[0].calls == 2 * 4
    saved = load_file(str(tmp_path / "checkpoint" / checkpoint.WEIGHTS_FILE))
    assert saved.keys() == _net().state_dict().keys()
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in saved.values())


def test_an_eval_spec_with_channels_last_evaluates_the_converted_model_to_the_same_flags(
    tmp_path, monkeypatch
):
    import numpy as np

    from workers.contract.spec import EvalSpec
    from workers.training import evaluation

    seen: list[bool] = []
    real = evaluation.evaluate

    def spy(model, *args, **kwargs):
        # features[3]: the first conv has 1 input channel, contiguous in both layouts
        seen.append(model.features[3].weight.is_contiguous(memory_format=torch.channels_last))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", spy)
    flags = []
    for layout in (False, True):
        out = tmp_path / str(layout)
        spec = EvalSpec(checkpoint="demo/base-linf-at", n=12, checks_n=0, suite="monitor",
                        precision="fp32", channels_last=layout)
        metrics = evaluation.run_evaluation(spec, out, device="cpu")
        flags.append(dict(np.load(out / "per_sample.npz")))
    assert seen == [False, True]
    assert flags[0].keys() == flags[1].keys() and metrics["n"] == 12
    for key in flags[0]:
        assert np.array_equal(flags[0][key], flags[1][key]), key
