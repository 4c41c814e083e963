"""Small solvers shared by several methods: the min-norm point (MGDA, EMTL, CAGrad), the KL-ball
mirror-ascent step (BanditMTL, EMTL), the normalised Gramian and unit-gradient weights of the
scale-free methods (EMTL, IMTL-G, normalised MGDA) and the bargaining solution (Nash-MTL).

They run in float64 NumPy on the CPU: the problems are K-sized, so per-operation overhead, not
arithmetic, sets their cost, and NumPy's is several times lower than torch's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def simplex_qp(
    quad: np.ndarray,
    lin: np.ndarray,
    start: np.ndarray | None = None,
    *,
    max_iter: int = 1000,
    tol: float = 1e-12,
) -> np.ndarray:
    """argmin over the simplex of 1/2 a^T Q a + c^T a, for a PSD Q, by away-step Frank-Wolfe.

    Frank-Wolfe with exact line search, as in MGDA (Sener & Koltun, NeurIPS 2018), plus away
    steps (Lacoste-Julien & Jaggi, NeurIPS 2015) so that the iterates converge linearly and drop
    vertices that do not belong to the support. For K = 2 the first step spans the whole simplex,
    so the exact line search returns the closed-form optimum. Stops when the Frank-Wolfe duality
    gap falls below `tol` times the scale of the problem.
    """
    k = quad.shape[0]
    if start is None:
        a = np.zeros(k)
        a[int(np.argmin(0.5 * quad.diagonal() + lin))] = 1.0
    else:
        a = start.astype(np.float64, copy=True)
    qa = quad @ a
    scale = float(np.abs(quad).max() + np.abs(lin).max())
    for _ in range(max_iter):
        grad = qa + lin
        s = int(np.argmin(grad))
        grad_a = float(grad @ a)
        gap_fw = grad_a - float(grad[s])
        if gap_fw <= tol * scale:
            break
        v = int(np.argmax(np.where(a > 0.0, grad, -np.inf)))
        away = float(grad[v]) - grad_a > gap_fw
        if away:
            direction = a.copy()
            direction[v] -= 1.0
            max_step = a[v] / (1.0 - a[v])
            q_dir = qa - quad[:, v]
        else:
            direction = -a
            direction[s] += 1.0
            max_step = 1.0
            q_dir = quad[:, s] - qa
        curvature = float(direction @ q_dir)
        slope = float(grad @ direction)
        step = max_step if curvature <= 0.0 else min(-slope / curvature, max_step)
        a = a + step * direction
        qa = qa + step * q_dir
        if away and step == max_step:
            a[v] = 0.0  # a drop step: make the vertex leave the support exactly
    return a


def min_norm_weights(gramian: Tensor, *, max_iter: int = 1000, tol: float = 1e-12) -> Tensor:
    """Weights a on the simplex of the min-norm point sum_i a_i g_i of the hull of the g_i.

    MGDA's sub-problem (Sener & Koltun 2018): min_a a^T G a, solved on the Gramian alone.
    Returns uniform weights when every gradient is zero (any point is then min-norm).
    """
    g = gramian.detach().cpu().numpy().astype(np.float64)
    a = min_norm_simplex(g, max_iter=max_iter, tol=tol)
    return torch.from_numpy(a).to(gramian.device, gramian.dtype)


def min_norm_simplex(g: np.ndarray, *, max_iter: int = 1000, tol: float = 1e-12) -> np.ndarray:
    """`min_norm_weights` on a NumPy Gramian."""
    k = g.shape[0]
    if not float(g.diagonal().max(initial=0.0)) > 0.0:
        return np.full(k, 1.0 / k)
    return simplex_qp(g, np.zeros(k), max_iter=max_iter, tol=tol)


def kl(p: np.ndarray) -> float:
    """KL(p || uniform) = sum_i p_i log(K p_i)."""
    nz = p > 0.0
    return float(np.sum(p[nz] * np.log(p.size * p[nz])))


def _gibbs(x: np.ndarray, tau: float) -> tuple[np.ndarray, float]:
    """p = softmax(tau x) and KL(p || uniform) for x <= 0 with max 0 (so exp cannot overflow):
    log(K p_i) = log K + tau x_i - log sum_j exp(tau x_j), written with few NumPy calls because
    the bisection evaluates it ~50 times per step."""
    e = np.exp(tau * x)
    total = float(e.sum())
    return e / total, tau * float(e @ x) / total - math.log(total) + math.log(x.size)


def kl_ball_mirror_ascent(
    p: Tensor, rewards: Tensor, eta: float, rho: float, *, max_iter: int = 200
) -> tuple[Tensor, float]:
    """One BanditMTL step (Mao et al., ACL 2021): the new task distribution and its multiplier.

    Solves max_p eta <p, rewards> - KL(p || p_prev) subject to KL(p || uniform) <= rho, whose
    solution is p proportional to q ** (1 / (1 + lam)) with q = p_prev * exp(eta * rewards); lam = 0
    when the constraint does not bind and otherwise is found by bisection so that the KL is rho.
    The bisection runs on tau = 1 / (1 + lam) in log space, because tau spans many decades when
    rewards do (losses of 1e8 need tau ~ 1e-8), and returns the feasible end (KL <= rho).
    """
    # log q, computed in log space so that rewards of any size cannot overflow
    x = np.log(np.maximum(p.detach().cpu().numpy().astype(np.float64), np.finfo(np.float64).tiny))
    x = x + eta * rewards.detach().cpu().numpy().astype(np.float64)
    x = x - x.max()
    new_p, divergence = _gibbs(x, 1.0)
    lam = 0.0
    if divergence > rho:
        # KL(softmax(tau x) || u) <= tau * spread, so log(rho / spread) is feasible, 0 is not;
        # KL grows monotonically with tau (entropy of a Gibbs distribution falls with 1/T).
        lo, hi = math.log(rho / -float(x.min())), 0.0
        for _ in range(max_iter):
            if hi - lo <= 1e-14:
                break
            mid = 0.5 * (lo + hi)
            if _gibbs(x, math.exp(mid))[1] <= rho:
                lo = mid
            else:
                hi = mid
        tau = math.exp(lo)
        new_p, lam = _gibbs(x, tau)[0], 1.0 / tau - 1.0
    return torch.from_numpy(new_p).to(p.device, p.dtype), lam


def unit_gramian(gramian: Tensor, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Gramian of the unit gradients g_i / (||g_i|| + eps) of the tasks that have a gradient.

    Returns (normalised Gramian [k, k] over the active tasks, norms [K], active mask [K]). A task
    whose gradient on the shared layers is zero (||g_i|| <= eps) has nothing to balance there:
    in a min-norm or bargaining problem its zero row would take all the weight from the others.
    Rescaling one task's gradient by s leaves the normalised Gramian unchanged (up to eps).
    """
    g = gramian.detach().cpu().numpy().astype(np.float64)
    norms = np.sqrt(np.clip(g.diagonal(), 0.0, None))
    active = norms > eps
    unit = g[np.ix_(active, active)] / np.outer(norms[active] + eps, norms[active] + eps)
    return unit, norms, active


def unit_weights(
    mix: np.ndarray, norms: np.ndarray, active: np.ndarray, eps: float, like: Tensor
) -> Tensor:
    """Loss weights w_i = K m_i / (||g_i|| + eps) for the active tasks' mix m (summing to 1).

    The weighted backward then moves the shared layers along K sum_i m_i g_i / ||g_i||: a mix of
    unit gradients, so no task's scale enters the direction, its shares m_i or its length (at
    most K, EW's on unit gradients). Inactive tasks keep EW's weight 1, so their own towers train.
    """
    k = norms.size
    w = np.ones(k)
    w[active] = k * mix / (norms[active] + eps)
    return torch.from_numpy(w).to(like.device, like.dtype)


def nash_bargaining(
    gramian: np.ndarray, *, ridge: float = 0.0, max_iter: int = 100, tol: float = 1e-24
) -> np.ndarray:
    """The positive solution b of (G + ridge I) b = 1 / b, the Nash bargaining weights.

    It is the minimiser of F(b) = 1/2 b^T (G + ridge I) b - sum_i log b_i over b > 0 (the
    gradient of F is the equation), a strictly convex, self-concordant function, so damped Newton
    (step 1 / (1 + lambda), lambda the Newton decrement) stays inside b > 0 and converges from any
    start; once lambda < 1/4 full steps stay inside too and converge quadratically (Nesterov &
    Nemirovski). Stops when lambda^2 / 2 <= tol (about F's distance to its minimum). Without the ridge no solution exists when a positive
    combination of the gradients cancels (e.g. g_2 = -g_1); the ridge bounds b there.
    """
    k = gramian.shape[0]
    a = gramian + ridge * np.eye(k)
    b = np.ones(k)
    for _ in range(max_iter):
        grad = a @ b - 1.0 / b
        try:
            step = np.linalg.solve(a + np.diag(1.0 / (b * b)), grad)
        except np.linalg.LinAlgError:
            break  # b diverges (no solution, ridge 0) until 1 / b^2 underflows: keep the last b
        decrement2 = float(grad @ step)
        if decrement2 / 2.0 <= tol:
            break
        decrement = math.sqrt(max(decrement2, 0.0))
        b = b - (step if decrement < 0.25 else step / (1.0 + decrement))
    return b
