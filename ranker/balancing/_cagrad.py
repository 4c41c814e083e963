"""CAGrad: Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ranker.balancing._solvers import simplex_qp
from ranker.balancing.base import Balancer, check_finite


class CAGrad(Balancer):
    """The update d maximising min_i g_i . d within the ball ||d - g0|| <= c ||g0|| around the mean
    gradient g0, as weights on the task gradients.

    Dual: w = argmin over the simplex of F(w) = g_w . g0 + c ||g0|| ||g_w||, g_w = sum_i w_i g_i;
    then d = g0 + lam g_w with lam = c ||g0|| / ||g_w||. Writing ||x|| = min_t ||x||^2 / (2t) + t / 2
    turns F into a convex problem in (w, t); we alternate the exact t = ||g_w|| with the simplex QP
    in w (warm-started) until t settles. Weights are K (1/K + lam w) / (1 + c^2): the update on EW's
    scale with the authors' default rescaling by 1 / (1 + c^2).
    """

    requires_gramian = True

    def __init__(
        self,
        num_tasks: int,
        c: float = 0.4,
        update_every: int = 1,
        max_rounds: int = 100,
        tol: float = 1e-10,
    ) -> None:
        super().__init__(num_tasks, update_every)
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.c = c
        self.max_rounds = max_rounds
        self.tol = tol

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(gramian, "gramian")
        g = gramian.cpu().numpy()
        k = self.num_tasks
        uniform = np.full(k, 1.0 / k)
        g_uniform = g @ uniform
        g0_norm = math.sqrt(max(float(uniform @ g_uniform), 0.0))
        radius = self.c * g0_norm
        lam = 0.0
        w = uniform
        # ||g_w|| below this is zero up to float64 rounding of the Gramian
        floor = 1e-12 * math.sqrt(float(np.abs(g).max(initial=0.0)))
        if radius > floor:
            t = g0_norm
            for _ in range(self.max_rounds):
                w = simplex_qp((radius / t) * g, g_uniform, start=w)
                t_new = math.sqrt(max(float(w @ g @ w), 0.0))
                settled = abs(t_new - t) <= self.tol * t
                t = t_new
                if settled or t <= floor:
                    break
            # If the hull's min-norm point is 0 the dual optimum can be g_w = 0; g0 alone stays.
            lam = radius / t if t > floor else 0.0
        weights = (1.0 + k * lam * w) / (1.0 + self.c**2)
        self.log["lam"] = torch.tensor(lam, dtype=torch.float64)
        return torch.from_numpy(weights).to(gramian.device, gramian.dtype)
