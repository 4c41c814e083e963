"""Nash-MTL: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as
a Bargaining Game", ICML 2022."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ranker.balancing._solvers import nash_bargaining, unit_gramian
from ranker.balancing.base import Balancer, check_finite


class NashMTL(Balancer):
    """The Nash bargaining solution: the update d = sum_i a_i g_i that maximises sum_i log(d . g_i)
    in a ball; its weights a > 0 solve G a = 1 / a (each task's utility d . g_i = 1 / a_i).

    As in the authors' code G is first divided by its Frobenius norm f, and a weights the losses
    directly; ||d||^2 = a^T G a = K f, so the step follows the gradients' scale like EW's.
    The system is solved on the unit gradients (U b = 1 / b, then a_i = sqrt(f) b_i / ||g_i||,
    exact since G = D U D with D = diag ||g_i||), by damped Newton (`_solvers.nash_bargaining`)
    in place of the paper's sequence of convex programs. Rescaling task i's gradient by s divides
    its weight by s and leaves the direction and every task's share a_i ||g_i|| of the update
    unchanged (the weights ignore the losses). `ridge` adds ridge * I to U: without it no solution
    exists when a positive combination of the gradients cancels; tasks with a zero gradient get
    weight 1 and stay out of the bargaining.
    """

    requires_gramian = True

    def __init__(
        self,
        num_tasks: int,
        update_every: int = 1,
        ridge: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-24,
    ) -> None:
        super().__init__(num_tasks, update_every)
        if ridge < 0 or max_iter < 1 or tol <= 0:
            raise ValueError(
                f"need ridge >= 0, max_iter >= 1, tol > 0; got ridge={ridge}, "
                f"max_iter={max_iter}, tol={tol}"
            )
        self.ridge = ridge
        self.max_iter = max_iter
        self.tol = tol

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(gramian, "gramian")
        unit, norms, active = unit_gramian(gramian, 0.0)
        w = np.ones(self.num_tasks)
        if active.any():
            b = nash_bargaining(unit, ridge=self.ridge, max_iter=self.max_iter, tol=self.tol)
            frobenius = float(np.linalg.norm(gramian.cpu().numpy()))
            w[active] = math.sqrt(frobenius) * b / norms[active]
        return torch.from_numpy(w).to(gramian.device, gramian.dtype)
