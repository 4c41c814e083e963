"""The Gramian G = [g_i . g_j] of per-task gradients, and the one weighted backward per step.

Per-task gradients are taken only on what the tasks share: the dense shared parameters (experts;
never embedding tables, whose gradients are large and sparse) or, in the cheap mode, the shared
representation (MGDA-UB, Sener & Koltun 2018), which needs no extra backward through the experts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ranker.balancing.base import Balancer

# Applied to each [K', numel] block of per-task gradients before its products; data parallelism
# passes a sum over ranks, so that G is the global batch's: G = (sum_r J_r)(sum_r J_r)^T, which the
# sum of the ranks' own Gramians is not. Every rank must call it for the same blocks (the graph
# decides which tasks reach which tensor, and it is the same on every rank).
ReduceGradients = Callable[[Tensor], Tensor]


def _gramian(
    losses: Sequence[Tensor], inputs: Sequence[Tensor], reduce: ReduceGradients | None = None
) -> Tensor:
    """G_ij = sum over the input tensors of <dL_i/dx, dL_j/dx>, float64 [K, K].

    One autograd.grad per task (graph retained); G is accumulated one input tensor at a time, so
    besides the per-task gradients only one [K, numel] block exists at once: the K x P Jacobian is
    never concatenated. A task that does not reach an input contributes zeros there.
    """
    if not inputs:
        raise ValueError("need at least one tensor to take task gradients on")
    k = len(losses)
    grads = [
        torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        if loss.requires_grad
        else (None,) * len(inputs)
        for loss in losses
    ]
    gramian = torch.zeros(k, k, dtype=torch.float64, device=inputs[0].device)
    for j in range(len(inputs)):
        rows = [i for i in range(k) if grads[i][j] is not None]
        if not rows:
            continue
        block = torch.stack([grads[i][j].reshape(-1) for i in rows])  # type: ignore[union-attr]
        if reduce is not None:
            block = reduce(block)
        if block.dtype not in (torch.float32, torch.float64):
            block = block.float()  # half-precision dot products over many entries lose too much
        product = (block @ block.T).double()
        if len(rows) == k:
            gramian += product
        else:
            index = torch.tensor(rows, device=gramian.device)
            gramian[index[:, None], index] += product
    return gramian


def gramian_on_params(
    losses: Sequence[Tensor], params: Iterable[Tensor], reduce: ReduceGradients | None = None
) -> Tensor:
    """Gramian [K, K] of the task gradients on the dense shared parameters `params`.

    Pass the shared experts only: each task costs a backward down to these parameters.
    Parameters that do not require gradients are skipped. `reduce` (see ReduceGradients) sums
    each parameter's per-task gradients over data-parallel ranks before the products.
    """
    return _gramian(list(losses), [p for p in params if p.requires_grad], reduce)


def gramian_on_representation(losses: Sequence[Tensor], reps: Sequence[Tensor]) -> Tensor:
    """Gramian [K, K] of the task gradients on shared representation tensors, e.g. MMoE expert
    outputs [B, E, H]: G_ij = sum over the batch of the per-sample products (MGDA-UB)."""
    reps = list(reps)
    if not all(r.requires_grad for r in reps):
        raise ValueError("shared representations must be part of the graph (requires_grad)")
    return _gramian(list(losses), reps)


def balanced_backward(
    losses: Tensor | Sequence[Tensor],
    balancer: Balancer,
    step: int,
    *,
    shared_params: Iterable[Tensor] | None = None,
    shared_reps: Sequence[Tensor] | None = None,
) -> Tensor:
    """One backward of sum_i w_i L_i (+ the balancer's regulariser); returns the weights [K].

    The Gramian is computed when `balancer.wants_gramian(step)`, on `shared_params` or on
    `shared_reps` (give one of them); on other steps the balancer reuses its last weights.
    """
    if shared_params is not None and shared_reps is not None:
        raise ValueError("give shared_params or shared_reps, not both")
    if isinstance(losses, Tensor):
        stacked, task_losses = losses, list(losses.unbind())
    else:
        task_losses = list(losses)
        stacked = torch.stack(task_losses)
    gramian = None
    if balancer.wants_gramian(step):
        if shared_params is not None:
            gramian = gramian_on_params(task_losses, shared_params)
        elif shared_reps is not None:
            gramian = gramian_on_representation(task_losses, shared_reps)
        else:
            raise ValueError(
                f"{type(balancer).__name__} needs the Gramian: give shared_params or shared_reps"
            )
    weights = balancer.weights(stacked, gramian)
    total = (weights * stacked).sum()
    regulariser = balancer.regulariser()
    if regulariser is not None:
        total = total + regulariser
    torch.autograd.backward(total)
    return weights.detach()
