"""BanditMTL: Mao, Yang, Zhang, Zhao & Yang, "BanditMTL: Bandit-based Multi-task Learning for Text
Classification", ACL 2021."""

from __future__ import annotations

import torch
from torch import Tensor

from ranker.balancing._solvers import kl_ball_mirror_ascent
from ranker.balancing.base import Balancer, check_finite


class Bandit(Balancer):
    """w = K p, p a task distribution raised toward high-loss tasks by mirror ascent on the raw
    losses, q_i = p_i exp(eta L_i), and kept within KL(p || uniform) <= rho (see `_solvers`).

    Raw losses make the method sensitive to their scales by design: EMTL is this step on the
    relative rates instead.
    """

    p: Tensor

    def __init__(self, num_tasks: int, eta: float = 0.5, rho: float = 0.1) -> None:
        super().__init__(num_tasks)
        if eta < 0 or rho <= 0:
            raise ValueError(f"need eta >= 0 and rho > 0, got eta={eta}, rho={rho}")
        self.eta = eta
        self.rho = rho
        self.register_buffer("p", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        check_finite(losses, "losses")
        p, lam = kl_ball_mirror_ascent(self.p, losses, self.eta, self.rho)
        self.p.copy_(p)
        self.log["p"] = p
        self.log["lam"] = torch.tensor(lam, dtype=torch.float64)
        return self.num_tasks * p
