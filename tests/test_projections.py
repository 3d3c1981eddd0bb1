"""Projections onto norm ball ∩ [0,1] box: feasibility for every norm and radius, and exactness
of the l_1 and l_2 intersections against independent solvers (numpy bisection in float64, SciPy
SLSQP, a variational-inequality certificate) and against pyautoattack's ``L1_projection``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from workers.attacks.projections import (
    PROJECTIONS,
    project,
    project_box,
    project_l1,
    project_l1_box,
    project_l2,
    project_l2_box,
    project_linf,
)

NORMS = ("linf", "l2", "l1")
PROPERTY = settings(derandomize=True, max_examples=60, deadline=None)


def norm_of(norm: str, delta: torch.Tensor) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1).double()
    return {"linf": flat.abs().amax(1), "l2": flat.norm(dim=1), "l1": flat.abs().sum(1)}[norm]


def make_case(seed: int, n: int, shape: tuple[int, ...], scale: float, edge_share: float):
    """x in [0,1] with some pixels exactly on the box edges, and a perturbation of size ~scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    edges = torch.rand(n, *shape, generator=g) < edge_share
    x = torch.where(edges, (torch.rand(n, *shape, generator=g) < 0.5).float(), x)
    delta = torch.randn(n, *shape, generator=g) * scale
    return x, delta


cases = st.builds(
    make_case,
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 5),
    shape=st.sampled_from([(1,), (7,), (1, 4, 4), (3, 5, 5)]),
    scale=st.sampled_from([0.0, 1e-3, 0.1, 1.0, 10.0]),
    edge_share=st.sampled_from([0.0, 0.3, 1.0]),
)
radii = st.one_of(st.just(0.0), st.floats(1e-4, 30.0))


def radius_for(case, eps: float, per_sample: bool):
    x, _ = case
    if not per_sample:
        return eps
    return eps * torch.linspace(0.0, 1.0, x.shape[0]).flip(0)


@PROPERTY
@given(case=cases, norm=st.sampled_from(NORMS), eps=radii, per_sample=st.booleans())
def test_projection_lands_in_ball_and_box(case, norm, eps, per_sample):
    x, delta = case
    radius = radius_for(case, eps, per_sample)
    out = project(norm, x, delta, radius)
    bound = torch.as_tensor(radius, dtype=torch.float64).expand(x.shape[0])
    assert out.shape == delta.shape and out.dtype == delta.dtype
    assert torch.all(norm_of(norm, out) <= bound * (1 + 1e-5) + 1e-5)
    assert (x + out).min() >= -1e-6 and (x + out).max() <= 1 + 1e-6


@PROPERTY
@given(case=cases, norm=st.sampled_from(NORMS), eps=radii)
def test_feasible_points_are_fixed_and_projection_is_idempotent(case, norm, eps):
    x, delta = case
    once = project(norm, x, delta, eps)
    torch.testing.assert_close(project(norm, x, once, eps), once, atol=1e-5, rtol=1e-5)
    inside = project_box(x, delta) * 0.5
    fits = norm_of(norm, inside) <= eps
    kept = project(norm, x, inside, eps)
    torch.testing.assert_close(kept[fits], inside[fits], atol=1e-6, rtol=1e-6)


@PROPERTY
@given(case=cases, norm=st.sampled_from(NORMS), eps=st.floats(0.01, 20.0))
def test_per_sample_radius_equals_one_radius_per_sample(case, norm, eps):
    x, delta = case
    radius = eps * torch.linspace(0.2, 1.0, x.shape[0])
    batched = project(norm, x, delta, radius)
    for i in range(x.shape[0]):
        alone = project(norm, x[i : i + 1], delta[i : i + 1], float(radius[i]))
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-6, rtol=1e-6)


# --- independent references (float64 numpy) ------------------------------------------------------


def room(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.where(v > 0, 1 - x, x)


def reference_l1_box(x: np.ndarray, v: np.ndarray, eps: float) -> np.ndarray:
    """KKT: d = sign(v) min(max(|v| - tau, 0), room); bisection on tau in float64."""
    a, cap = np.abs(v), room(x, v)

    def mass(tau: float) -> float:
        return float(np.minimum(np.maximum(a - tau, 0), cap).sum())

    tau = 0.0
    if mass(0.0) > eps:
        lo, hi = 0.0, float(a.max())
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mass(mid) > eps else (lo, mid)
        tau = hi
    return np.sign(v) * np.minimum(np.maximum(a - tau, 0), cap)


def reference_l2_box(x: np.ndarray, v: np.ndarray, eps: float) -> np.ndarray:
    """KKT: d = clip(t v, -x, 1 - x) for the largest t in [0, 1] with ||d|| <= eps."""
    a, cap = np.abs(v), room(x, v)

    def length(t: float) -> float:
        return float(np.linalg.norm(np.minimum(t * a, cap)))

    t = 1.0
    if length(1.0) > eps:
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if length(mid) <= eps else (lo, mid)
        t = lo
    return np.sign(v) * np.minimum(t * a, cap)


def slsqp_projection(norm: str, x: np.ndarray, v: np.ndarray, eps: float) -> np.ndarray:
    """A generic QP solve: split d = p - q with p, q >= 0 so the l_1 constraint is smooth."""
    n = v.size
    if norm == "l1":
        objective = lambda z: 0.5 * np.sum((z[:n] - z[n:] - v) ** 2)  # noqa: E731
        constraints = [
            {"type": "ineq", "fun": lambda z: eps - z.sum()},
            {"type": "ineq", "fun": lambda z: z[:n] - z[n:] + x},
            {"type": "ineq", "fun": lambda z: 1 - x - (z[:n] - z[n:])},
        ]
        result = minimize(objective, np.zeros(2 * n), method="SLSQP", bounds=[(0, None)] * (2 * n),
                          constraints=constraints, options={"ftol": 1e-14, "maxiter": 500})
        return result.x[:n] - result.x[n:]
    objective = lambda d: 0.5 * np.sum((d - v) ** 2)  # noqa: E731
    constraints = [{"type": "ineq", "fun": lambda d: eps**2 - np.sum(d**2)}]
    result = minimize(objective, np.zeros(n), method="SLSQP", bounds=list(zip(-x, 1 - x, strict=True)),
                      constraints=constraints, options={"ftol": 1e-14, "maxiter": 500})
    return result.x


EXACT = {"l1": (project_l1_box, reference_l1_box), "l2": (project_l2_box, reference_l2_box)}


@PROPERTY
@given(case=cases, norm=st.sampled_from(["l1", "l2"]), eps=radii)
def test_exact_projection_matches_float64_kkt_solution(case, norm, eps):
    x, delta = case
    ours, reference = EXACT[norm]
    got = ours(x, delta, eps).reshape(x.shape[0], -1).double().numpy()
    xs, vs = x.reshape(x.shape[0], -1).double().numpy(), delta.reshape(x.shape[0], -1).double().numpy()
    want = np.stack([reference(xi, vi, eps) for xi, vi in zip(xs, vs, strict=True)])
    np.testing.assert_allclose(got, want, atol=2e-6 * max(1.0, eps), rtol=1e-5)


@settings(derandomize=True, max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 6), norm=st.sampled_from(["l1", "l2"]),
       eps=st.floats(0.05, 3.0), scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_exact_projection_matches_a_generic_qp_solver(seed, d, norm, eps, scale):
    x, delta = make_case(seed, 1, (d,), scale, edge_share=0.2)
    got = EXACT[norm][0](x, delta, eps)[0].double().numpy()
    want = slsqp_projection(norm, x[0].double().numpy(), delta[0].double().numpy(), eps)
    # Compare objective values (the minimiser is unique; SLSQP is only accurate to ~1e-6).
    v = delta[0].double().numpy()
    assert np.sum((got - v) ** 2) <= np.sum((want - v) ** 2) + 1e-6
    np.testing.assert_allclose(got, want, atol=1e-3)


@PROPERTY
@given(case=cases, norm=st.sampled_from(NORMS), eps=st.floats(0.01, 20.0), seed=st.integers(0, 1000))
def test_projection_satisfies_the_variational_inequality(case, norm, eps, seed):
    """p = P_C(v) iff <v - p, z - p> <= 0 for every z in C: check random feasible z."""
    x, delta = case
    p = project(norm, x, delta, eps).double()
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):
        z = project(norm, x, torch.randn(x.shape, generator=g) * eps, eps).double()
        inner = ((delta.double() - p) * (z - p)).reshape(x.shape[0], -1).sum(1)
        scale = delta.double().reshape(x.shape[0], -1).norm(dim=1) * max(1.0, eps)
        assert torch.all(inner <= 1e-5 * (1 + scale))


def test_exact_l2_is_closer_than_ball_then_clip():
    x, delta = make_case(3, 64, (1, 8, 8), 0.5, edge_share=0.3)
    exact = project_l2_box(x, delta, 1.0)
    clipped = project_box(x, project_l2(delta, 1.0))
    gap = (clipped - delta).flatten(1).norm(dim=1) - (exact - delta).flatten(1).norm(dim=1)
    assert torch.all(gap >= -1e-6)
    assert torch.any(gap > 1e-3)  # clipping after the ball really does waste radius


@pytest.mark.parametrize("eps", [2.0, 10.0, 12.0, 100.0])
def test_l1_box_matches_pyautoattack_on_an_mnist_sized_batch(eps):
    from pyautoattack.autopgd_base import L1_projection

    x, delta = make_case(0, 128, (1, 28, 28), 0.3, edge_share=0.2)
    # pyautoattack returns the correction to add to the perturbation, not the projection itself.
    theirs = delta + L1_projection(x, delta, eps)
    ours = project_l1_box(x, delta, eps)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert norm_of("l1", ours).max() <= eps * (1 + 1e-6)


@PROPERTY
@given(case=cases, eps=radii)
def test_ball_only_projections(case, eps):
    _, delta = case
    v = delta.reshape(delta.shape[0], -1).double().numpy()
    linf = np.clip(v, -eps, eps)
    np.testing.assert_allclose(project_linf(delta, eps).reshape(v.shape).numpy(), linf, atol=1e-7)
    l2 = v * np.minimum(1.0, eps / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300))
    np.testing.assert_allclose(project_l2(delta, eps).reshape(v.shape).numpy(), l2, atol=1e-6 * max(1, eps))
    l1 = np.stack([_l1_ball(row, eps) for row in v])
    np.testing.assert_allclose(project_l1(delta, eps).reshape(v.shape).numpy(), l1, atol=2e-6 * max(1, eps))


def _l1_ball(v: np.ndarray, eps: float) -> np.ndarray:
    """Duchi et al. (2008): sort-based projection onto the l_1 ball."""
    a = np.abs(v)
    if a.sum() <= eps:
        return v.copy()
    if eps <= 0:
        return np.zeros_like(v)
    u = np.sort(a)[::-1]
    cumulative = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, a.size + 1) > cumulative - eps)[0][-1]
    tau = (cumulative[rho] - eps) / (rho + 1)
    return np.sign(v) * np.maximum(a - tau, 0)


def test_projection_registry_covers_every_norm():
    assert PROJECTIONS.names() == sorted(NORMS)
    with pytest.raises(KeyError, match="available: l1, l2, linf"):
        project("l0", torch.zeros(1, 2), torch.zeros(1, 2), 1.0)


def test_per_sample_radius_must_match_the_batch():
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        project("l2", torch.zeros(2, 4), torch.ones(2, 4), torch.ones(3))
