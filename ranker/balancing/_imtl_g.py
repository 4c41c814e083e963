"""IMTL-G: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021 (the gradient-balancing half of IMTL)."""

from __future__ import annotations

import torch
from torch import Tensor

from ranker.balancing.base import Balancer, check_finite


class IMTLG(Balancer):
    """Weights a (sum 1, then times K) whose combined gradient d = sum_i a_i g_i has equal
    projections d . g_i / ||g_i|| on every task's unit gradient.

    d . g_i = (G a)_i, so the condition is G a = mu ||g||: a is proportional to G^+ ||g||, the
    paper's closed form written on the Gramian. Eigenvalues of G below `rtol` times the largest
    count as zero: a Gramian accumulated from float32 gradients carries no information there.
    """

    requires_gramian = True

    def __init__(self, num_tasks: int, update_every: int = 1, rtol: float = 1e-8) -> None:
        super().__init__(num_tasks, update_every)
        self.rtol = rtol

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(gramian, "gramian")
        norms = gramian.diagonal().clamp_min(0.0).sqrt()
        a: Tensor = torch.linalg.pinv(gramian, rtol=self.rtol, hermitian=True) @ norms
        total = float(a.sum())
        if not abs(total) > 0.0:
            return torch.ones_like(norms)  # all gradients zero: nothing to balance
        return a * (self.num_tasks / total)
