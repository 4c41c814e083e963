"""MGDA: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018
(Desideri's multiple-gradient descent algorithm; MGDA-UB when G is taken on the representation)."""

from __future__ import annotations

from torch import Tensor

from ranker.balancing._solvers import min_norm_weights
from ranker.balancing.base import Balancer, check_finite


class MGDA(Balancer):
    """w = K a, a the simplex weights of the min-norm point of the convex hull of the task
    gradients: a common descent direction for every task (or a Pareto-stationary point)."""

    requires_gramian = True

    def __init__(
        self, num_tasks: int, update_every: int = 1, max_iter: int = 1000, tol: float = 1e-12
    ) -> None:
        super().__init__(num_tasks, update_every)
        self.max_iter = max_iter
        self.tol = tol

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(gramian, "gramian")
        return self.num_tasks * min_norm_weights(gramian, max_iter=self.max_iter, tol=self.tol)
