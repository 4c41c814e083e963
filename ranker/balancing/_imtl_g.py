"""IMTL-G: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021 (the gradient-balancing half of IMTL)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ranker.balancing._solvers import unit_gramian, unit_weights
from ranker.balancing.base import Balancer, check_finite


class IMTLG(Balancer):
    """Weights whose update d = sum_i w_i g_i has equal projections d . u_i on every unit task
    gradient u_i = g_i / ||g_i||, solved on the unit gradients.

    Write d = K sum_i m_i u_i; then d . u_j = K (U m)_j with U the normalised Gramian, and equal
    projections mean U m = mu 1: m proportional to U^+ 1, scaled to sum 1, and w_i = K m_i /
    (||g_i|| + eps). The paper's closed form is the same condition on the raw gradients; a
    pseudo-inverse of the raw Gramian throws the small task's direction away at norm ratios
    around 1e4 (measured: weights [3, 0, 0] at s = 1.1e4), while U has a unit diagonal whatever
    the scales. 1^T U^+ 1 >= 0 (U^+ is PSD), so the projections mu = 1 / (1^T U^+ 1) are positive:
    d descends on every task. Eigenvalues of U below `rtol` times the largest count as zero. If
    no direction has equal positive projections (1^T U^+ 1 = 0, e.g. u_2 = -u_1), m is uniform.
    Weights may be negative (a task's unit gradient subtracted to even out the projections).
    """

    requires_gramian = True

    def __init__(
        self, num_tasks: int, update_every: int = 1, rtol: float = 1e-8, eps: float = 1e-8
    ) -> None:
        super().__init__(num_tasks, update_every)
        if rtol < 0 or eps < 0:
            raise ValueError(f"need rtol >= 0 and eps >= 0, got rtol={rtol}, eps={eps}")
        self.rtol = rtol
        self.eps = eps

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(gramian, "gramian")
        unit, norms, active = unit_gramian(gramian, self.eps)
        k = int(active.sum())
        if k == 0:
            return gramian.new_ones(self.num_tasks)  # all gradients zero: nothing to balance
        m = np.linalg.pinv(unit, rtol=self.rtol, hermitian=True) @ np.ones(k)
        total = float(m.sum())
        m = m / total if total > 1e-12 * float(np.abs(m).sum()) else np.full(k, 1.0 / k)
        return unit_weights(m, norms, active, self.eps, gramian)
