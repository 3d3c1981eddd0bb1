"""The training attacks' reduced-precision twin (``train_precision``): what it computes, when it is
refreshed, and that it never reaches the model's batch-norm statistics or its checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.attacks.result import AttackResult
from workers.contract import catalog
from workers.methods import build_method
from workers.methods.base import MethodContext
from workers.methods.twin import AttackTwin, resolve_train_precision
from workers.models import build_model

EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


def _bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(8 * 16, 10),
    )


def _batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _ctx(precision: str, method: str = "ramp") -> MethodContext:
    params = catalog.param_defaults(method, "mnist-5k", finetune=False) | {"gp.enabled": False}
    return MethodContext(epsilons=dict(EPS), params=params, num_classes=10, train_precision=precision)


def test_resolution_names_and_auto_follows_the_hardware(monkeypatch):
    import workers.methods.twin as twin

    cpu = torch.device("cpu")
    assert [resolve_train_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    monkeypatch.setattr(twin, "native_bf16", lambda device: True)
    assert resolve_train_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(twin, "native_bf16", lambda device: False)
    assert resolve_train_precision("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="unknown train_precision 'fp8'"):
        resolve_train_precision("fp8", cpu)
    with pytest.raises(ValueError, match="unknown train_precision"):
        AttackTwin("half")


def test_float32_attacks_differentiate_the_model_itself():
    model = _bn_net()
    assert AttackTwin("fp32")(model) is model


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_the_twin_is_a_reduced_channels_last_eval_copy_refreshed_only_after_a_change(precision, dtype):
    model = _bn_net().train()
    twin = AttackTwin(precision)
    attacked = twin(model)
    inner = attacked.model
    assert attacked is not model and not attacked.training and not inner.training
    assert inner[0].weight.dtype == dtype and inner[5].weight.dtype == dtype
    assert inner[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert inner[1].running_mean.dtype == torch.float32  # BN state stays float32 (autocast casts it)
    assert not any(p.requires_grad for p in inner.parameters())
    assert model.training and model[0].weight.dtype == torch.float32 and model[0].weight.is_contiguous()
    assert twin.refreshes == 1

    assert twin(model) is attacked and twin.refreshes == 1  # nothing changed: no copy
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    before = inner[0].weight.clone()
    assert twin(model) is attacked and twin.refreshes == 2
    assert not torch.equal(inner[0].weight, before)  # the step reached the twin
    assert torch.equal(inner[0].weight, model[0].weight.detach().to(dtype))
    assert torch.equal(inner[1].running_var, model[1].running_var)  # train forward moved the BN stats


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_twins_input_gradient_matches_float32_in_direction_and_size(precision):
    model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=(28, 28)).eval()
    x, y = _batch(8)
    grads = []
    for m in (model, AttackTwin(precision)(model)):
        xr = x.clone().requires_grad_(True)
        logits = m(xr)
        assert logits.dtype == torch.float32
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xr)
        grads.append(g.flatten(1))
    cos = F.cosine_similarity(grads[0], grads[1], dim=1)
    assert bool((cos > 0.97).all()), cos
    ratio = grads[1].norm(dim=1) / grads[0].norm(dim=1)
    assert bool(((ratio > 0.9) & (ratio < 1.1)).all()), ratio  # fp16's gradient scale is undone


def test_fp16_gradient_scaling_keeps_a_tiny_gradient_from_underflowing():
    # A loss scaled down so far that its gradient w.r.t. float16 activations underflows to zero
    # without loss scaling; with the twin's scaling the input gradient survives.
    model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=(28, 28)).eval()
    x, y = _batch(4)
    twin = AttackTwin("fp16")(model)

    def input_grad(m: nn.Module) -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(1e-6 * F.cross_entropy(m(xr), y, reduction="sum"), xr)
        return g

    assert input_grad(twin).abs().sum() > 0
    twin.grad_scale = 1.0
    assert input_grad(twin).abs().sum() == 0  # the same graph unscaled: the case the scale is for


class _TrainModeAttack:
    """An attack that forwards whatever it is given in *train* mode (as a careless attack would)
    and returns the clean batch: any BN statistics it moves are visible afterwards."""

    def __init__(self) -> None:
        self.seen: list[nn.Module] = []

    def __call__(self, model, x, y, norm, eps, n_iter, *, l1_sparsity):
        self.seen.append(model)
        model.train()
        with torch.no_grad():
            model(x)
        return AttackResult(x_adv=x.clone(), loss=torch.zeros(x.shape[0]))


@pytest.mark.parametrize("method", ["at-linf", "ramp"])
def test_bn_statistics_come_from_the_outer_pass_only(method):
    x, y = _batch()
    model, reference = _bn_net().train(), _bn_net().train()
    # The outer pass alone, on the batch the attack returns (x): one train forward per adversarial
    # batch the method trains on (RAMP: r, q and max).
    for _ in range(3 if method == "ramp" else 1):
        reference(x)

    attack = _TrainModeAttack()
    cls = build_method(method, _ctx("bf16", method)).__class__
    cls(_ctx("bf16", method), attack=attack).compute_loss(model, x, y)
    assert attack.seen and all(m is not model for m in attack.seen)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    # In float32 the attack runs on the model itself, so the same attack does move its statistics:
    # the comparison above can fail.
    fp32_model = _bn_net().train()
    cls(_ctx("fp32", method), attack=_TrainModeAttack()).compute_loss(fp32_model, x, y)
    assert not torch.equal(fp32_model[1].running_mean, reference[1].running_mean)


def test_msd_and_trades_attack_the_twin():
    x, y = _batch(8)
    for name in ("msd", "trades"):
        model = _bn_net().train()
        method = build_method(name, _ctx("bf16", name))
        out = method.compute_loss(model, x, y)
        assert method.twin.refreshes == 1 and torch.isfinite(out.loss)
        assert model[0].weight.dtype == torch.float32


def test_a_bf16_run_checkpoints_the_float32_model_only(tmp_path):
    from safetensors.torch import load_file

    from workers import checkpoint
    from workers.contract.spec import TrainSpec
    from workers.training.loop import run_training

    spec = TrainSpec(method="at-linf", dataset="mnist-5k", model="small-cnn", epochs=1, max_steps=2,
                     batch_size=16, train_n=32, eval_n=0, monitor_n=0, train_precision="bf16",
                     params={"attack.steps_linf": 2})
    run_training(spec.resolve(), tmp_path, device="cpu")
    saved = load_file(str(tmp_path / "checkpoint" / checkpoint.WEIGHTS_FILE))
    fresh = build_model("small-cnn", num_classes=10, in_channels=1, input_size=(28, 28)).state_dict()
    assert saved.keys() == fresh.keys()
    assert {k: v.dtype for k, v in saved.items()} == {k: v.dtype for k, v in fresh.items()}
    assert all(v.is_contiguous() for v in saved.values())
    state = checkpoint.load_train_state(tmp_path)

    def tensors(obj: object) -> list[torch.Tensor]:
        if isinstance(obj, torch.Tensor):
            return [obj]
        if isinstance(obj, dict):
            return [t for v in obj.values() for t in tensors(v)]
        if isinstance(obj, list | tuple):
            return [t for v in obj for t in tensors(v)]
        return []

    assert not [t for t in tensors(state) if t.dtype in (torch.bfloat16, torch.float16)]
    meta = checkpoint.load_metadata(tmp_path)
    assert meta["spec"]["train_precision"] == "bf16"


def test_with_the_same_adversarial_batch_the_update_is_the_float32_one():
    # The twin only changes which batch the attack finds; given the same batch (the injected
    # attack's), the loss and every parameter gradient are those of the float32 step, bit for bit.
    x, y = _batch()
    results = []
    for precision in ("fp32", "bf16"):
        model = _bn_net().train()
        method = build_method("ramp", _ctx(precision)).__class__(_ctx(precision), attack=_TrainModeAttack())
        out = method.compute_loss(model, x, y)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss32, grads32), (loss16, grads16) = results
    assert torch.equal(loss32, loss16)
    assert all(torch.equal(a, b) and b.dtype == torch.float32 for a, b in zip(grads32, grads16, strict=True))


def test_resuming_needs_the_same_speed_settings_and_old_checkpoints_count_as_the_defaults(tmp_path):
    from workers.contract.spec import TrainSpec
    from workers.training.loop import ResumeError, _check_resumable

    current = TrainSpec(method="nt", epochs=1).resolve().model_dump(mode="json")
    old = {k: v for k, v in current.items() if k not in ("train_precision", "channels_last", "compile")}
    _check_resumable(old, current, tmp_path)  # written before the fields existed: the defaults
    for field, value in (("train_precision", "bf16"), ("channels_last", True), ("compile", True)):
        with pytest.raises(ResumeError, match=field):
            _check_resumable(old, current | {field: value}, tmp_path)
