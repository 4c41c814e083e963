"""EMTL: equitable multi-task learning ("Equitable Multi-Task Learning", arXiv 2306.09373), as
reconstructed in the project's METHODS.md, steps 1-5."""

from __future__ import annotations

import torch
from torch import Tensor

from ranker.balancing._solvers import kl_ball_mirror_ascent, min_norm_weights
from ranker.balancing.base import Balancer, check_finite


class EMTL(Balancer):
    """w = K (beta a + (1 - beta) p): MGDA's min-norm weights a merged with bandit weights p that
    mirror-ascend on the relative rates r_i = L_i / (||g_i|| + eps) within KL(p || uniform) <= rho.

    r_i is how much a task is served per unit of push on the shared layers; p, kept across updates
    in a buffer, shifts weight toward tasks with high r, and the KL ball (rho < ln K to bind) keeps
    it from collapsing onto one task. beta = 1 is plain MGDA. Logs r, p, a, w and the multiplier.

    Because p accumulates, the constraint soon binds at every update: on the toy problem of
    tests/ranker/balancing/test_emtl_equity.py p sat on the sphere KL = rho from the first steps,
    tilted toward the tasks with persistently high r, and eta = 0.5 or 5 gave the same run. rho
    (how far p may tilt) and beta (how much MGDA) are then the knobs that change the weights.
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
        r = losses / (gramian.diagonal().clamp_min(0.0).sqrt() + self.eps)  # step 2
        p, lam = kl_ball_mirror_ascent(self.p, r, self.eta, self.rho)  # step 3
        self.p.copy_(p)
        a = min_norm_weights(gramian)  # step 4
        w = self.beta * a + (1.0 - self.beta) * p  # step 5
        w = self.num_tasks * w / w.sum()
        self.log.update(r=r, p=p, a=a, lam=torch.tensor(lam, dtype=torch.float64))
        return w
