"""MGDA: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018
(Desideri's multiple-gradient descent algorithm; MGDA-UB when G is taken on the representation)."""

from __future__ import annotations

from torch import Tensor

from ranker.balancing._solvers import (
    min_norm_simplex,
    min_norm_weights,
    unit_gramian,
    unit_weights,
)
from ranker.balancing.base import Balancer, check_finite


class MGDA(Balancer):
    """w = K a, a the simplex weights of the min-norm point of the convex hull of the task
    gradients: a common descent direction for every task (or a Pareto-stationary point).

    On raw gradients the min-norm point leans toward the smallest one, so one task's gradient
    scale decides the direction. `normalise: true` solves on the unit gradients g_i / ||g_i||
    (the authors' "l2" normalisation) and returns w_i = K a_i / (||g_i|| + eps): direction, shares
    and length of the update are then independent of every task's scale (EMTL with beta = 1).
    """

    requires_gramian = True

    def __init__(
        self,
        num_tasks: int,
        update_every: int = 1,
        max_iter: int = 1000,
        tol: float = 1e-12,
        normalise: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(num_tasks, update_every)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.max_iter = max_iter
        self.tol = tol
        self.normalise = normalise
        self.eps = eps

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(gramian, "gramian")
        if not self.normalise:
            return self.num_tasks * min_norm_weights(gramian, max_iter=self.max_iter, tol=self.tol)
        unit, norms, active = unit_gramian(gramian, self.eps)
        if not active.any():
            return gramian.new_ones(self.num_tasks)
        a = min_norm_simplex(unit, max_iter=self.max_iter, tol=self.tol)
        return unit_weights(a, norms, active, self.eps, gramian)
