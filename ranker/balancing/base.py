"""The balancer interface: task losses and their Gramian in, one weight per task out.

A balancer only chooses weights; the trainer runs one backward of `sum_i w_i L_i (+ regulariser)`
(see `ranker.balancing.gramian.balanced_backward`). This is TorchJD's split between an aggregator
that maps the Gramian G = [g_i . g_j] of per-task gradients to weights and the single weighted
backward done elsewhere.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class Balancer(nn.Module):
    """Maps task losses [K] (and, for gradient-based methods, the Gramian [K, K]) to weights [K].

    Weights are on the scale of equal weighting (EW: all ones, sum K) unless a method defines its
    own scale (`static`, `uw`, `pcgrad`, `cagrad`, `nash_mtl`), so one learning rate suits every
    method. The scale-free methods (`emtl`, `imtl_g`, `mgda` with `normalise`) return
    K m_i / ||g_i||: EW's scale on unit gradients, so no task's loss scale reaches the update. All
    state lives in buffers and parameters, so `state_dict()` checkpoints it. Keep the balancer on
    the device of the losses: moving tensors between devices every step forces a synchronisation.
    """

    requires_gramian: ClassVar[bool] = False
    last_weights: Tensor

    def __init__(self, num_tasks: int, update_every: int = 1) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.num_tasks = num_tasks
        self.update_every = update_every
        # Float64: the methods' maths is O(K) or O(K^2), and the extra precision keeps weights
        # finite and scale-free over gradient and loss scales from 1e-8 to 1e8.
        self.register_buffer("last_weights", torch.ones(num_tasks, dtype=torch.float64))
        self.log: dict[str, Tensor] = {}

    def wants_gramian(self, step: int) -> bool:
        """Whether the trainer should compute the Gramian at `step` (0-based) for this method."""
        return self.requires_gramian and step % self.update_every == 0

    def weights(self, losses: Tensor, gramian: Tensor | None = None) -> Tensor:
        """Task weights [K] for task losses [K] and the Gramian [K, K] of their gradients.

        A method that needs the Gramian reuses its last weights when given none (the steps
        between `update_every` updates; ones before the first update). The weights are detached
        unless they are learnt through the loss (`uw`). `self.log` holds what to log this step.
        """
        k = self.num_tasks
        if losses.shape != (k,):
            raise ValueError(f"losses must have shape ({k},), got {tuple(losses.shape)}")
        if gramian is not None and gramian.shape != (k, k):
            raise ValueError(f"gramian must have shape ({k}, {k}), got {tuple(gramian.shape)}")
        if gramian is None and self.requires_gramian:
            w = self.last_weights.clone()  # a copy: the buffer changes at the next update
        else:
            device = self.last_weights.device
            self.log = {}
            w = self._weights(
                losses.detach().to(device, torch.float64),
                None if gramian is None else gramian.detach().to(device, torch.float64),
            )
            self.last_weights.copy_(w.detach())
            self.log["w"] = w.detach()
        return w.to(losses.device, losses.dtype)

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        """The method itself: float64 losses [K] and Gramian [K, K] (or None) to weights [K]."""
        raise NotImplementedError

    def regulariser(self) -> Tensor | None:
        """An extra term the trainer adds to the weighted loss (uncertainty weighting's sum s_i)."""
        return None

    def extra_repr(self) -> str:
        extra = f", update_every={self.update_every}" if self.requires_gramian else ""
        return f"num_tasks={self.num_tasks}{extra}"


def check_finite(tensor: Tensor, what: str) -> None:
    """Refuse non-finite inputs before they enter a method's persistent state."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} must be finite, got {tensor.tolist()}")
