"""FAMO: Liu, Liang, Lu, Zhao, Boyd, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask
Optimization", NeurIPS 2023."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ranker.balancing.base import Balancer, check_finite


class FAMO(Balancer):
    """Descends sum_i z_i log(L_i - m_i + eps) with z = softmax(xi): weights on the raw losses
    w_i proportional to z_i / (L_i - m_i + eps), summing to K. O(K) per step, no Gramian.

    The logits xi learn from the decrease of the log losses between consecutive calls: the
    gradient of xi is the softmax Jacobian applied to that decrease, plus weight decay `decay`,
    and moves weight toward the tasks that improved least. As in the authors' code xi follows
    Adam (lr 0.025, decay 0.01), written out here so its moments live in buffers. The paper
    measures the decrease on one batch before and after the step; between calls it is measured
    across consecutive batches.
    """

    logits: Tensor
    min_losses: Tensor
    prev_log_losses: Tensor
    started: Tensor
    adam_m: Tensor
    adam_v: Tensor
    adam_t: Tensor

    def __init__(
        self,
        num_tasks: int,
        lr: float = 0.025,
        decay: float = 0.01,
        min_losses: Sequence[float] | None = None,
        eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__(num_tasks)
        self.lr = lr
        self.decay = decay
        self.eps = eps
        self.betas = betas
        mins = [0.0] * num_tasks if min_losses is None else list(min_losses)
        if len(mins) != num_tasks:
            raise ValueError(f"min_losses needs {num_tasks} values, got {len(mins)}")
        zeros = torch.zeros(num_tasks, dtype=torch.float64)
        self.register_buffer("logits", zeros.clone())
        self.register_buffer("min_losses", torch.tensor(mins, dtype=torch.float64))
        self.register_buffer("prev_log_losses", zeros.clone())
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("adam_m", zeros.clone())
        self.register_buffer("adam_v", zeros.clone())
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.float64))

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        check_finite(losses, "losses")
        shifted = (losses - self.min_losses).clamp_min(0.0) + self.eps
        log_losses = shifted.log()
        if bool(self.started):
            self._update_logits(self.prev_log_losses - log_losses)
        self.prev_log_losses.copy_(log_losses)
        self.started.fill_(True)
        z = torch.softmax(self.logits, 0)
        w = z / shifted
        self.log["z"] = z
        return self.num_tasks * w / w.sum()

    def _update_logits(self, decrease: Tensor) -> None:
        z = torch.softmax(self.logits, 0)
        grad = z * (decrease - (z * decrease).sum()) + self.decay * self.logits
        beta1, beta2 = self.betas
        self.adam_t.add_(1.0)
        self.adam_m.mul_(beta1).add_((1 - beta1) * grad)
        self.adam_v.mul_(beta2).add_((1 - beta2) * grad * grad)
        m_hat = self.adam_m / (1 - beta1**self.adam_t)
        v_hat = self.adam_v / (1 - beta2**self.adam_t)
        self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))
