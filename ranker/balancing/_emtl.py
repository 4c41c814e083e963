"""EMTL: equitable multi-task learning ("Equitable Multi-Task Learning", arXiv 2306.09373), as
reconstructed in the project's METHODS.md, steps 1-6."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ranker.balancing._solvers import (
    kl_ball_mirror_ascent,
    min_norm_simplex,
    unit_gramian,
    unit_weights,
)
from ranker.balancing.base import Balancer, check_finite


class EMTL(Balancer):
    """w_i = K (beta a_i + (1 - beta) p_i) / (||g_i|| + eps): a mix of unit task gradients.

    1. ||g_i|| = sqrt(G_ii), from the Gramian of this update.
    2. r_i = L_i / (||g_i|| + eps), the relative rate: how much a task is served per unit of push
       on the shared layers. Scaling one task's loss and gradient together leaves it unchanged.
    3. p, kept across updates in a buffer, mirror-ascends on r: q_i = p_i exp(eta r_i), then
       p ~ q ** (1 / (1 + lam)) with lam set so that KL(p || uniform) <= rho (rho < ln K binds).
    4. The player minimises sum_i p_i r_i with ||g_i|| held fixed, so p acts on the unit gradients
       g_i / ||g_i||, never on the raw losses (applied to raw losses, one task scaled 100x took
       99.9% of the update).
    5. a: MGDA's min-norm point of the unit gradients (the normalised Gramian, MGDA-UB's "l2"),
       so the gradient-balancing part is scale-free too.
    6. Merge m = beta a + (1 - beta) p; the update sum_i w_i g_i = K sum_i m_i g_i / ||g_i||.

    The scalar c = K in w_i = c m_i / ||g_i|| makes the weighted loss K sum_i m_i r_i (with
    ||g_i|| detached): the relative-rate objective of step 4 itself. It is scale-free: rescaling
    one task's loss and gradient by s changes neither the update's direction, nor each task's share
    m_i of it, nor its length (at most K, EW's step on unit gradients), so one task's outliers
    cannot inflate the others' steps through Adam's moments. beta = 1 is `mgda` with
    `normalise: true`. Tasks with no gradient on the shared layers (||g_i|| <= eps) keep weight 1
    and are left out of steps 3-6 (reward 0). Logs r, p, a, w and the multiplier lam.

    Because p accumulates, the KL constraint soon binds at every update, so rho (how far p may
    tilt) and beta (how much MGDA) are the knobs that change the weights; eta barely matters.
    """

    requires_gramian = True
    p: Tensor

    def __init__(
        self,
        num_tasks: int,
        rho: float = 0.1,
        eta: float = 0.5,
        beta: float = 0.5,
        eps: float = 1e-8,
        update_every: int = 1,
    ) -> None:
        super().__init__(num_tasks, update_every)
        if rho <= 0 or eta < 0 or not 0 <= beta <= 1 or eps < 0:
            raise ValueError(
                f"need rho > 0, eta >= 0, 0 <= beta <= 1, eps >= 0; got rho={rho}, eta={eta}, "
                f"beta={beta}, eps={eps}"
            )
        self.rho = rho
        self.eta = eta
        self.beta = beta
        self.eps = eps
        self.register_buffer("p", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(losses, "losses")
        check_finite(gramian, "gramian")
        unit, norms, active = unit_gramian(gramian, self.eps)  # step 1
        rates = np.where(active, losses.cpu().numpy() / (norms + self.eps), 0.0)  # step 2
        r = torch.from_numpy(rates).to(losses.device, losses.dtype)
        p, lam = kl_ball_mirror_ascent(self.p, r, self.eta, self.rho)  # step 3
        self.p.copy_(p)
        if not active.any():
            return torch.ones_like(losses)  # no task pushes the shared layers: nothing to balance
        a = min_norm_simplex(unit)  # step 5
        p_active = p.cpu().numpy()[active]
        mix = self.beta * a + (1.0 - self.beta) * p_active / p_active.sum()  # steps 4 and 6
        w = unit_weights(mix, norms, active, self.eps, losses)
        a_full = np.zeros(self.num_tasks)
        a_full[active] = a
        self.log.update(
            r=r, p=p, a=torch.from_numpy(a_full), lam=torch.tensor(lam, dtype=torch.float64)
        )
        return w
