"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018."""

from __future__ import annotations

import torch
from torch import Tensor

from ranker.balancing.base import Balancer, check_finite


class GradNorm(Balancer):
    """Weights learnt so that the weighted gradient norms w_i ||g_i|| follow the mean weighted norm
    times (r_i) ** alpha, r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0)) the relative inverse rate.

    ||w_i g_i|| = w_i sqrt(G_ii), so the GradNorm loss sum_i |w_i ||g_i|| - target_i| (targets held
    constant, as in the paper) and its gradient sign(.) ||g_i|| come from the Gramian. Each update
    takes one step of size `lr` on that gradient divided by mean_i ||g_i||, then renormalises the
    weights to sum to K. The paper trains the weights with the network's optimizer; dividing by the
    mean norm makes the step, like an Adam step, independent of the gradients' scale. L_i(0) are
    the losses of the first update.
    """

    requires_gramian = True
    task_weights: Tensor
    initial_losses: Tensor
    started: Tensor

    def __init__(
        self, num_tasks: int, alpha: float = 1.5, lr: float = 0.025, update_every: int = 1
    ) -> None:
        super().__init__(num_tasks, update_every)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.alpha = alpha
        self.lr = lr
        self.register_buffer("task_weights", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(losses, "losses")
        check_finite(gramian, "gramian")
        tiny = torch.finfo(torch.float64).tiny
        self.initial_losses.copy_(torch.where(self.started, self.initial_losses, losses))
        self.started.fill_(True)
        norms = gramian.diagonal().clamp_min(0.0).sqrt()
        inverse_rate = losses / self.initial_losses.clamp_min(tiny)
        relative = inverse_rate / inverse_rate.mean().clamp_min(tiny)
        weighted = self.task_weights * norms
        target = weighted.mean() * relative**self.alpha
        step = torch.sign(weighted - target) * norms / norms.mean().clamp_min(tiny)
        w = (self.task_weights - self.lr * step).clamp_min(0.0)
        total = w.sum()
        w = torch.where(total > 0, self.num_tasks * w / total.clamp_min(tiny), torch.ones_like(w))
        self.task_weights.copy_(w)
        self.log["relative_rate"] = relative
        return w.clone()
