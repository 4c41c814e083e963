"""Gramians on parameters and on the representation against hand computation, and the single
weighted backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ranker.balancing import (
    balanced_backward,
    build_balancer,
    gramian_on_params,
    gramian_on_representation,
)

B, D, H = 8, 4, 3


class TinyModel(nn.Module):
    """z = x W^T + b shared; task i predicts z . a_i (+ z . e for task 0 only), MSE losses."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(H, D, generator=gen, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(H, generator=gen, dtype=torch.float64))
        self.extra = nn.Parameter(torch.randn(H, generator=gen, dtype=torch.float64))  # task 0
        self.heads = nn.Parameter(torch.randn(3, H, generator=gen, dtype=torch.float64))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = x @ self.weight.T + self.bias  # [B, H]
        pred = z @ self.heads.T  # [B, 3]
        pred = pred + torch.stack([z @ self.extra, 0 * pred[:, 1], 0 * pred[:, 2]], 1)
        return ((pred - y) ** 2).mean(0), z


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64)
    return x, torch.randn(B, 3, generator=gen, dtype=torch.float64)


def hand_rep_grads(model: TinyModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dL_i/dz [3, B, H]: L_i = mean_b (z_b . c_i - y_bi)^2, c_0 = a_0 + e, c_i = a_i."""
    with torch.no_grad():
        z = x @ model.weight.T + model.bias
        c = model.heads.clone()
        c[0] += model.extra
        resid = z @ c.T - y  # [B, 3]
        return torch.stack([(2 / B) * resid[:, i, None] * c[i] for i in range(3)])


def test_gramian_on_params_equals_hand_jacobian() -> None:
    model = TinyModel()
    x, y = data()
    losses, _ = model(x, y)
    rep = hand_rep_grads(model, x, y)  # chain rule: dL/dW = dL/dz^T x, dL/db = sum_b dL/dz
    jac_w = torch.einsum("kbh,bd->khd", rep, x).reshape(3, -1)
    jac_b = rep.sum(1)
    jac = torch.cat([jac_w, jac_b], 1)
    expected = jac @ jac.T
    torch.testing.assert_close(
        gramian_on_params(list(losses), [model.weight, model.bias]), expected
    )
    # `extra` reaches task 0 only: the other tasks' gradients there are zeros (allow_unused)
    g = gramian_on_params(list(losses), [model.weight, model.bias, model.extra])
    with torch.no_grad():
        z = x @ model.weight.T + model.bias
        resid0 = z @ (model.heads[0] + model.extra) - y[:, 0]
        grad_extra0 = (2 / B) * resid0 @ z
    expected[0, 0] += grad_extra0 @ grad_extra0
    torch.testing.assert_close(g, expected)


def test_the_reduce_hook_gives_the_global_batchs_gramian_from_one_ranks_losses() -> None:
    """Two "ranks" each hold half the batch (losses scaled by their share, as the trainer does).
    Summing each block of per-task gradients over them, the hook's job, gives the Gramian of the
    whole batch; adding the ranks' own Gramians does not (the cross terms are missing)."""
    model = TinyModel()
    x, y = data()
    params = [model.weight, model.bias, model.extra]
    halves = [model(x[part], y[part])[0] * 0.5 for part in (slice(0, B // 2), slice(B // 2, B))]
    whole = gramian_on_params(list(model(x, y)[0]), params)
    # The other rank's blocks, in the order the hook meets them (one per parameter).
    other = [
        torch.stack([g.reshape(-1) for g in grads if g is not None])
        for grads in zip(
            *(
                torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                for loss in halves[1]
            ),
            strict=True,
        )
    ]
    blocks = iter(other)
    reduced = gramian_on_params(list(halves[0]), params, lambda block: block + next(blocks))
    torch.testing.assert_close(reduced, whole)
    assert next(blocks, None) is None  # called once per parameter
    separate = sum(gramian_on_params(list(h), params) for h in halves)
    assert not torch.allclose(separate, whole)


def test_gramian_on_params_skips_constant_losses_and_frozen_params() -> None:
    model = TinyModel()
    x, y = data()
    losses, _ = model(x, y)
    model.bias.requires_grad_(False)
    g = gramian_on_params([losses[0], torch.tensor(1.0, dtype=torch.float64)], model.parameters())
    assert g[1].abs().sum() == 0 and g[:, 1].abs().sum() == 0 and g[0, 0] > 0


def test_gramian_on_representation_equals_hand_sum_over_batch() -> None:
    model = TinyModel()
    x, y = data()
    losses, z = model(x, y)
    rep = hand_rep_grads(model, x, y)
    expected = torch.einsum("ibh,jbh->ij", rep, rep)
    torch.testing.assert_close(gramian_on_representation(list(losses), [z]), expected)
    with pytest.raises(ValueError, match="part of the graph"):
        gramian_on_representation(list(losses), [z.detach()])


@pytest.mark.parametrize("mode", ["params", "reps"])
@pytest.mark.parametrize("name", ["mgda", "uw", "ew"])
def test_balanced_backward_grad_is_weighted_sum(mode: str, name: str) -> None:
    model = TinyModel()
    x, y = data()
    balancer = build_balancer(name, 3, regression=[True] * 3)
    losses, z = model(x, y)
    shared = {"shared_params": [model.weight]} if mode == "params" else {"shared_reps": [z]}
    w = balanced_backward(losses, balancer, step=0, **shared)
    got = {n: p.grad for n, p in model.named_parameters()}
    reference = TinyModel()
    ref_losses, _ = reference(x, y)
    (w * ref_losses).sum().backward()
    for n, p in reference.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)
    if name == "mgda":
        assert not torch.equal(w, torch.ones(3, dtype=w.dtype))
    if name == "uw":  # the regulariser's gradient reached the log-variances too
        torch.testing.assert_close(balancer.log_var.grad, 0.5 * (1 - ref_losses.detach().float()))


def test_balanced_backward_needs_shared_tensors_only_on_gramian_steps() -> None:
    model = TinyModel()
    x, y = data()
    balancer = build_balancer("mgda", 3, {"update_every": 2})
    with pytest.raises(ValueError, match="needs the Gramian"):
        balanced_backward(model(x, y)[0], balancer, step=0)
    w = balanced_backward(list(model(x, y)[0]), balancer, step=1)  # reuses the last weights
    assert torch.equal(w, torch.ones(3, dtype=w.dtype))
    losses, z = model(x, y)
    with pytest.raises(ValueError, match="not both"):
        balanced_backward(losses, balancer, 0, shared_params=[model.weight], shared_reps=[z])
