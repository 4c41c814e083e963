"""Each method's own maths, checked against its definition or optimality conditions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.balancing import (
    DWA,
    EMTL,
    FAMO,
    IMTLG,
    MGDA,
    UW,
    Bandit,
    CAGrad,
    GradNorm,
    MinMax,
    NashMTL,
    PCGrad,
    Static,
)
from ranker.balancing._solvers import kl, kl_ball_mirror_ascent, nash_bargaining

seeds = st.integers(0, 2**16)
maths_settings = settings(max_examples=25, deadline=None, derandomize=True)


def jacobian(k: int, seed: int, dim: int = 6, shift: float = 0.0) -> torch.Tensor:
    """Task gradients [K, dim] as rows; `shift` adds a common component (less conflict)."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(1, dim, generator=gen, dtype=torch.float64)
    return torch.randn(k, dim, generator=gen, dtype=torch.float64) + shift * common


def ones(k: int) -> torch.Tensor:
    return torch.ones(k, dtype=torch.float64)


# --- MGDA -------------------------------------------------------------------------------------


@maths_settings
@given(seed=seeds, k=st.integers(2, 7), shift=st.sampled_from([0.0, 1.0, 3.0]))
def test_mgda_kkt(seed: int, k: int, shift: float) -> None:
    """d = sum a_i g_i is the min-norm point of the hull: g_i . d >= ||d||^2, equal on the support."""
    jac = jacobian(k, seed, dim=k + 2, shift=shift)
    a = MGDA(k).weights(ones(k), jac @ jac.T) / k
    assert a.sum().item() == pytest.approx(1.0) and (a >= 0).all()
    d = a @ jac
    slack = jac @ d - d @ d
    tol = 1e-9 * float((jac @ jac.T).diagonal().max())
    assert (slack >= -tol).all()
    assert (slack[a > 1e-9].abs() <= tol).all()


@maths_settings
@given(seed=seeds)
def test_mgda_two_tasks_closed_form(seed: int) -> None:
    jac = jacobian(2, seed)
    g = jac @ jac.T
    gamma = ((g[1, 1] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1])).clamp(0, 1)
    expected = 2 * torch.stack([gamma, 1 - gamma])
    torch.testing.assert_close(MGDA(2).weights(ones(2), g), expected, rtol=1e-12, atol=1e-12)


def test_mgda_on_zero_gradients_is_uniform() -> None:
    torch.testing.assert_close(MGDA(3).weights(ones(3), torch.zeros(3, 3)), ones(3))
    torch.testing.assert_close(MGDA(3, normalise=True).weights(ones(3), torch.zeros(3, 3)), ones(3))


def unit_rows(jac: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return jac / (jac.norm(dim=1, keepdim=True) + eps)


@maths_settings
@given(seed=seeds, k=st.integers(2, 6), shift=st.sampled_from([0.0, 1.0]))
def test_normalised_mgda_is_mgda_on_unit_gradients(seed: int, k: int, shift: float) -> None:
    """w_i (||g_i|| + eps) = K a_i, a MGDA's weights for the unit gradients, whatever the norms."""
    jac = jacobian(k, seed, dim=k + 2, shift=shift)
    jac = jac * torch.logspace(-3, 3, k, dtype=torch.float64)[:, None]  # norms over six decades
    unit = unit_rows(jac)
    w = MGDA(k, normalise=True).weights(ones(k), jac @ jac.T)
    expected = MGDA(k).weights(ones(k), unit @ unit.T)
    torch.testing.assert_close(w * (jac.norm(dim=1) + 1e-8), expected)


def test_a_task_without_gradient_keeps_weight_one() -> None:
    """A zero row would be the min-norm point and take all the weight: it is left out instead."""
    jac = jacobian(3, 0)
    jac[1] = 0.0
    g = jac @ jac.T
    for balancer in (MGDA(3, normalise=True), IMTLG(3), EMTL(3), NashMTL(3)):
        w = balancer.weights(ones(3), g)
        assert w[1] == 1.0 and (w[[0, 2]] != 0).all(), type(balancer).__name__


# --- PCGrad -----------------------------------------------------------------------------------


@maths_settings
@given(seed=seeds)
def test_pcgrad_two_tasks_closed_form(seed: int) -> None:
    """g1' = g1 - (g1.g2/|g2|^2) g2 and g2' = g2 - (g1.g2/|g1|^2) g1 when g1.g2 < 0."""
    jac = jacobian(2, seed)
    g1, g2 = jac
    dot = g1 @ g2
    projected = (g1 - dot / (g2 @ g2) * g2) + (g2 - dot / (g1 @ g1) * g1)
    expected = projected if dot < 0 else g1 + g2
    w = PCGrad(2, seed=seed).weights(ones(2), jac @ jac.T)
    torch.testing.assert_close(w @ jac, expected)


def test_pcgrad_is_reproducible_from_its_seed() -> None:
    jac = jacobian(4, 0)
    g = jac @ jac.T
    a, b, c = PCGrad(4, seed=3), PCGrad(4, seed=3), PCGrad(4, seed=4)
    runs = [[m.weights(ones(4), g) for _ in range(6)] for m in (a, b, c)]
    assert all(torch.equal(x, y) for x, y in zip(runs[0], runs[1], strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(runs[0], runs[2], strict=True))


# --- IMTL-G -----------------------------------------------------------------------------------


@maths_settings
@given(seed=seeds, k=st.integers(2, 6), shift=st.sampled_from([0.0, 1.0]))
def test_imtl_g_equal_positive_projections(seed: int, k: int, shift: float) -> None:
    """d . g_i / ||g_i|| is the same positive number for every task, and d = K sum_i m_i u_i
    with sum_i m_i = 1, for gradient norms spread over six decades (eps 0: exact unit vectors)."""
    jac = jacobian(k, seed, dim=k + 3, shift=shift)
    jac = jac * torch.logspace(-3, 3, k, dtype=torch.float64)[:, None]
    w = IMTLG(k, eps=0.0).weights(ones(k), jac @ jac.T)
    mix = w * jac.norm(dim=1) / k
    assert mix.sum().item() == pytest.approx(1.0)
    d = w @ jac
    projections = jac @ d / jac.norm(dim=1)
    assert projections.min() > 0
    torch.testing.assert_close(projections, projections.mean().expand(k), rtol=1e-9, atol=0.0)


@maths_settings
@given(seed=seeds, k=st.integers(2, 5))
def test_imtl_g_direction_matches_the_raw_closed_form(seed: int, k: int) -> None:
    """Where the raw Gramian is well conditioned, the paper's G^+ ||g|| gives the same update
    direction (its scale differs: the paper's weights sum to 1)."""
    jac = jacobian(k, seed, dim=k + 3, shift=1.0)
    g = jac @ jac.T
    raw = torch.linalg.pinv(g, hermitian=True) @ g.diagonal().sqrt()
    raw = raw / raw.sum()
    d, d_raw = IMTLG(k).weights(ones(k), g) @ jac, raw @ jac
    cos = d @ d_raw / (d.norm() * d_raw.norm())
    assert cos.item() == pytest.approx(1.0, abs=1e-9)


def test_imtl_g_keeps_the_small_tasks_at_a_norm_ratio_of_1e4() -> None:
    """The raw Gramian's pseudo-inverse collapses onto the large task here ([3, 0, 0]); on unit
    gradients the small tasks keep their share |w_i| ||g_i|| and the projections stay equal."""
    jac = jacobian(3, 0, dim=6, shift=0.5)
    jac[0] *= 1.1e4
    g = jac @ jac.T

    def shares(w: torch.Tensor) -> torch.Tensor:
        return (w.abs() * jac.norm(dim=1)) / (w.abs() * jac.norm(dim=1)).sum()

    raw = torch.linalg.pinv(g, rtol=1e-8, hermitian=True) @ g.diagonal().sqrt()
    assert shares(raw)[1:].max() < 1e-3  # the old closed form
    w = IMTLG(3).weights(ones(3), g)
    assert shares(w).min() > 0.05
    projections = jac @ (w @ jac) / jac.norm(dim=1)
    torch.testing.assert_close(projections, projections.mean().expand(3), rtol=1e-7, atol=0.0)


# --- CAGrad -----------------------------------------------------------------------------------


def cagrad_update(w: torch.Tensor, jac: torch.Tensor, c: float) -> torch.Tensor:
    """The raw update d = g0 + lam g_w from the returned weights (1 + K lam w) / (1 + c^2)."""
    return (1 + c**2) * (w @ jac) / len(w)


@maths_settings
@given(seed=seeds, k=st.integers(2, 5), c=st.sampled_from([0.1, 0.4, 0.8]))
def test_cagrad_constraint_and_optimality(seed: int, k: int, c: float) -> None:
    """d lies in the ball ||d - g0|| <= c ||g0|| and maximises min_i g_i . d over it."""
    jac = jacobian(k, seed, dim=k + 3, shift=0.5)
    g0 = jac.mean(0)
    radius = c * g0.norm()
    w = CAGrad(k, c=c).weights(ones(k), jac @ jac.T)
    d = cagrad_update(w, jac, c)
    assert (d - g0).norm() <= radius * (1 + 1e-9)
    # any other point of the ball (boundary and interior) does no better for the worst task
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(4000, jac.shape[1], generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(4000, 1, generator=gen, dtype=torch.float64)
    others = g0 + radius * u
    best_other = (others @ jac.T).min(1).values.max()
    assert (jac @ d).min() >= best_other - 1e-9 * radius * jac.norm(dim=1).max()


def test_cagrad_matches_brute_force_dual_three_tasks() -> None:
    """Strong duality: min_i g_i . d equals the minimum over a fine simplex grid of the dual
    F(w) = g_w . g0 + c ||g0|| ||g_w||."""
    k, c = 3, 0.4
    jac = jacobian(k, 7, dim=5, shift=0.3)
    g0 = jac.mean(0)
    d = cagrad_update(CAGrad(k, c=c).weights(ones(k), jac @ jac.T), jac, c)
    n = 600
    grid = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    w0, w1 = torch.meshgrid(grid, grid, indexing="ij")
    keep = (w0 + w1) <= 1
    w = torch.stack([w0[keep], w1[keep], 1 - w0[keep] - w1[keep]], 1)
    gw = w @ jac
    dual = (gw @ g0 + c * g0.norm() * gw.norm(dim=1)).min()
    primal = (jac @ d).min()
    assert primal <= dual + 1e-9  # weak duality
    assert primal == pytest.approx(float(dual), rel=1e-4)  # grid resolution


def test_cagrad_with_zero_c_is_ew() -> None:
    jac = jacobian(3, 0)
    torch.testing.assert_close(CAGrad(3, c=0.0).weights(ones(3), jac @ jac.T), ones(3))


# --- KL-ball mirror ascent: BanditMTL and EMTL ------------------------------------------------


@maths_settings
@given(seed=seeds, k=st.integers(2, 6), rho=st.sampled_from([0.01, 0.1, 0.5]))
def test_mirror_ascent_kl_ball(seed: int, k: int, rho: float) -> None:
    """KL(p || uniform) <= rho always, = rho when the constraint binds (lam > 0), and otherwise
    p is the unconstrained step p_prev exp(eta x) normalised."""
    gen = torch.Generator().manual_seed(seed)
    prev = torch.softmax(0.3 * torch.randn(k, generator=gen, dtype=torch.float64), 0)
    rewards = torch.exp(3 * torch.randn(k, generator=gen, dtype=torch.float64))
    p, lam = kl_ball_mirror_ascent(prev, rewards, 0.5, rho)
    divergence = kl(p.numpy())
    assert p.sum().item() == pytest.approx(1.0) and divergence <= rho + 1e-12
    if lam > 0:
        assert divergence == pytest.approx(rho, rel=1e-9)
        log_q = prev.log() + 0.5 * rewards  # p proportional to q ** (1 / (1 + lam))
        torch.testing.assert_close(p, torch.softmax(log_q / (1 + lam), 0))
    else:
        torch.testing.assert_close(p, torch.softmax(prev.log() + 0.5 * rewards, 0))


def test_mirror_ascent_binds_only_when_rho_below_ln_k() -> None:
    prev = torch.full((3,), 1 / 3, dtype=torch.float64)
    rewards = torch.tensor([0.0, 0.0, 1e3], dtype=torch.float64)
    _, lam = kl_ball_mirror_ascent(prev, rewards, 0.5, 1.0)
    assert lam > 0
    _, lam = kl_ball_mirror_ascent(prev, rewards, 0.5, math.log(3) + 1e-9)
    assert lam == 0.0


def test_bandit_moves_weight_toward_the_highest_loss() -> None:
    bandit = Bandit(3)
    losses = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    w = bandit.weights(losses)
    assert w[2] > w[1] > w[0] and w.sum().item() == pytest.approx(3.0)
    assert kl((w / 3).numpy()) <= 0.1 + 1e-12


@maths_settings
@given(seed=seeds, k=st.integers(2, 5))
def test_emtl_steps(seed: int, k: int) -> None:
    """r, the KL ball, MGDA on the unit gradients and the merge, per METHODS.md steps 1-6."""
    jac = jacobian(k, seed, dim=k + 2)
    jac = jac * torch.logspace(-2, 2, k, dtype=torch.float64)[:, None]
    g = jac @ jac.T
    norms = jac.norm(dim=1) + 1e-8
    unit = unit_rows(jac)
    losses = torch.exp(torch.randn(k, generator=torch.Generator().manual_seed(seed + 1)))
    emtl = EMTL(k, rho=0.1, eta=0.5, beta=0.5)
    for _ in range(3):  # p persists: constraint must hold on every call
        w = emtl.weights(losses.double(), g)
        log = emtl.log
        torch.testing.assert_close(log["r"], losses.double() / norms)  # step 2
        assert kl(log["p"].numpy()) <= 0.1 + 1e-12  # step 3
        if log["lam"] > 0:
            assert kl(log["p"].numpy()) == pytest.approx(0.1, rel=1e-9)
        torch.testing.assert_close(log["a"], MGDA(k).weights(ones(k), unit @ unit.T) / k)  # 5
        mix = 0.5 * log["a"] + 0.5 * log["p"]
        torch.testing.assert_close(w, k * mix / norms)  # step 6, c = K
        torch.testing.assert_close(w @ jac, k * mix @ unit)  # the update: unit gradients mixed
    assert torch.equal(emtl.p, log["p"])


@maths_settings
@given(seed=seeds, k=st.integers(2, 5))
def test_emtl_beta_one_is_normalised_mgda(seed: int, k: int) -> None:
    jac = jacobian(k, seed, dim=k + 2)
    g = jac @ jac.T
    losses = torch.rand(k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(
        EMTL(k, beta=1.0).weights(losses, g), MGDA(k, normalise=True).weights(losses, g)
    )


def test_emtl_weighted_loss_is_the_relative_rate_objective() -> None:
    """sum_i w_i L_i = K sum_i m_i r_i: c = K makes the loss the player's objective of step 4."""
    jac = jacobian(3, 4)
    losses = torch.tensor([100.0, 1.0, 0.5], dtype=torch.float64)
    emtl = EMTL(3)
    w = emtl.weights(losses, jac @ jac.T)
    mix = 0.5 * emtl.log["a"] + 0.5 * emtl.log["p"]
    assert (w * losses).sum().item() == pytest.approx(3 * float(mix @ emtl.log["r"]))


# --- Nash-MTL ---------------------------------------------------------------------------------


@maths_settings
@given(seed=seeds, k=st.integers(2, 6), shift=st.sampled_from([0.0, 1.0, 3.0]))
def test_nash_mtl_solves_the_bargaining_equation(seed: int, k: int, shift: float) -> None:
    """a > 0 and (G / ||G||_F) a = 1 / a, the authors' normalised equation, for norms spread
    over six decades (the ridge's effect is below the tolerance on these full-rank Gramians)."""
    jac = jacobian(k, seed, dim=k + 3, shift=shift)
    jac = jac * torch.logspace(-3, 3, k, dtype=torch.float64)[:, None]
    g = jac @ jac.T
    a = NashMTL(k, ridge=0.0).weights(ones(k), g)
    assert (a > 0).all()
    g_hat = g / torch.linalg.matrix_norm(g)
    torch.testing.assert_close(g_hat @ a * a, ones(k), rtol=1e-8, atol=1e-8)


@maths_settings
@given(seed=seeds, k=st.integers(2, 4))
def test_nash_mtl_maximises_the_product_of_utilities(seed: int, k: int) -> None:
    """d = sum a_i g_i maximises sum_i log(d' . g_i) over the sphere ||d'|| = ||d||."""
    jac = jacobian(k, seed, dim=k + 2, shift=1.5)
    d = NashMTL(k, ridge=0.0).weights(ones(k), jac @ jac.T) @ jac
    best = torch.log(jac @ d).sum()
    gen = torch.Generator().manual_seed(seed)
    others = d + 0.3 * d.norm() * torch.randn(
        4000, jac.shape[1], generator=gen, dtype=torch.float64
    )
    others = others / others.norm(dim=1, keepdim=True) * d.norm()
    utilities = others @ jac.T
    feasible = (utilities > 0).all(dim=1)
    assert feasible.sum() > 100
    assert (torch.log(utilities[feasible]).sum(dim=1) <= best + 1e-9).all()


def test_nash_mtl_orthogonal_closed_form() -> None:
    """Orthogonal gradients: a_i = sqrt(||G||_F) / ||g_i||, every utility d . g_i equal."""
    norms = torch.tensor([0.1, 1.0, 30.0], dtype=torch.float64)
    g = torch.diag(norms**2)
    a = NashMTL(3).weights(ones(3), g)
    torch.testing.assert_close(a, torch.linalg.matrix_norm(g).sqrt() / norms, rtol=1e-6, atol=0)


def test_nash_bargaining_ridge_bounds_cancelling_gradients() -> None:
    """g_2 = -g_1 has no solution; with the ridge (U + ridge I) b = 1 / b, b = 1 / sqrt(ridge)."""
    unit = np.array([[1.0, -1.0], [-1.0, 1.0]])
    b = nash_bargaining(unit, ridge=1e-6)
    np.testing.assert_allclose(b, [1e3, 1e3], rtol=1e-9)
    assert np.isfinite(nash_bargaining(unit, ridge=0.0)).all()


# --- loss-based methods -----------------------------------------------------------------------


def test_uw_regulariser_and_gradients() -> None:
    """Loss c_i exp(-s_i) L_i + s_i / 2 (log sigma = s / 2), c = 1/2 for regression and 1 for
    classification: d/ds_i = 1/2 - c_i exp(-s_i) L_i, so s_i -> log(2 c_i L_i)."""
    uw = UW(3, regression=[True, False, True], init_log_var=0.0)
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.5, -1.0, 2.0]))
    losses = torch.tensor([2.0, 0.3, 5.0])
    c = torch.tensor([0.5, 1.0, 0.5])
    w = uw.weights(losses)
    torch.testing.assert_close(w, c * torch.exp(-uw.log_var.detach()))
    total = (w * losses).sum() + uw.regulariser()
    torch.testing.assert_close(uw.regulariser(), 0.5 * uw.log_var.sum())
    (grad,) = torch.autograd.grad(total, uw.log_var)
    torch.testing.assert_close(grad, 0.5 - c * torch.exp(-uw.log_var.detach()) * losses)
    # the optimum: s = log L for a regression, log 2L for a classification; weight 1 / (2 L)
    opt = torch.optim.SGD(uw.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        ((uw.weights(losses) * losses).sum() + uw.regulariser()).backward()
        opt.step()
    torch.testing.assert_close(uw.log_var.detach(), (2 * c * losses).log(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(uw.weights(losses).detach(), 0.5 / losses, rtol=1e-4, atol=1e-4)


def test_dwa_closed_form() -> None:
    dwa = DWA(3, temperature=2.0, window=1)
    first = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    second = torch.tensor([0.5, 2.0, 5.0], dtype=torch.float64)
    assert torch.equal(dwa.weights(first), ones(3))
    expected = 3 * torch.softmax((second / first) / 2.0, 0)
    torch.testing.assert_close(dwa.weights(second), expected)


def test_dwa_window_averages() -> None:
    dwa = DWA(2, window=2)
    steps = [[1.0, 1.0], [3.0, 1.0], [1.0, 1.0], [1.0, 3.0]]
    for s in steps:
        w = dwa.weights(torch.tensor(s, dtype=torch.float64))
    ratio = torch.tensor([1.0 / 2.0, 2.0 / 1.0], dtype=torch.float64)
    torch.testing.assert_close(w, 2 * torch.softmax(ratio / 2.0, 0))


def test_famo_moves_weight_toward_the_task_that_decreased_less() -> None:
    famo = FAMO(2)
    famo.weights(torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.equal(famo.log["z"], torch.tensor([0.5, 0.5], dtype=torch.float64))
    losses = torch.tensor([0.5, 0.9], dtype=torch.float64)  # task 0 improved more
    w = famo.weights(losses)
    z = famo.log["z"]
    assert z[1] > z[0]
    # weights are z_i / L_i normalised to K: more than uniform z would give task 1
    uniform = (1 / losses) / (1 / losses).sum() * 2
    assert w[1] > uniform[1] and w.sum().item() == pytest.approx(2.0)


def test_famo_matches_the_authors_update_rule() -> None:
    """The hand-written Adam on the logits equals torch.optim.Adam(lr, weight_decay) on
    d = softmax Jacobian^T (log-loss decrease), as in the authors' code."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([logits], lr=0.025, weight_decay=0.01)
    famo, prev = FAMO(4), None
    for _ in range(20):
        losses = torch.exp(torch.randn(4, generator=gen, dtype=torch.float64))
        if prev is not None:
            decrease = (prev + 1e-8).log() - (losses + 1e-8).log()
            (grad,) = torch.autograd.grad(torch.softmax(logits, 0), logits, decrease)
            adam.zero_grad()
            logits.grad = grad
            adam.step()
        prev = losses
        z_over_d = torch.softmax(logits.detach(), 0) / (losses + 1e-8)
        torch.testing.assert_close(famo.weights(losses), 4 * z_over_d / z_over_d.sum())


def test_gradnorm_raises_the_weight_of_the_slower_task() -> None:
    """Equal gradient norms; task 0's loss falls less, so its target norm and weight rise."""
    gn = GradNorm(2, alpha=1.5, lr=0.1)
    g = torch.eye(2, dtype=torch.float64)
    gn.weights(torch.tensor([1.0, 1.0], dtype=torch.float64), g)
    w = gn.weights(torch.tensor([0.9, 0.5], dtype=torch.float64), g)
    assert w[0] > w[1] and w.sum().item() == pytest.approx(2.0)
    assert torch.equal(gn.task_weights, w)


def test_gradnorm_fixed_point_equalises_weighted_norms() -> None:
    """With equal loss rates, repeated updates drive w_i ||g_i|| to a common value."""
    gn = GradNorm(3, lr=0.01)
    g = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))  # norms 1, 2, 3
    for _ in range(400):
        w = gn.weights(ones(3), g)
    weighted = w * g.diagonal().sqrt()
    assert (weighted.max() - weighted.min()) / weighted.mean() < 0.05


def test_minmax_hard_ties_and_smoothing() -> None:
    losses = torch.tensor([1.0, 3.0, 3.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(MinMax(4).weights(losses), torch.tensor([0.0, 2, 2, 0]).double())
    soft = MinMax(4, temperature=0.5).weights(losses)
    torch.testing.assert_close(soft, 4 * losses**2 / (losses**2).sum())
    sharp = MinMax(4, temperature=1e-3).weights(losses)
    torch.testing.assert_close(sharp, torch.tensor([0.0, 2, 2, 0]).double())


def test_static_validates_its_weights() -> None:
    assert torch.equal(
        Static(2, [0.2, 3.0]).weights(ones(2)), torch.tensor([0.2, 3.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="needs 2 values"):
        Static(2, [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        Static(2, [1.0, -1.0])
