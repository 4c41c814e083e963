"""Torch side of `ranker.tasks`: each loss name's training loss and inference output transform.

A model's raw output per task is what the loss compares (a logit for `bce`, log1p(seconds) for
`log_mse`, seconds for `mse`, [logit of P(W > 0), mu, sigma] for `ziln`); `task_output` maps it to
natural units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ranker.tasks import Task

# Upper clamp of a log1p(seconds) output before expm1: e^30 s is far past any watch time and keeps
# the output finite.
MAX_LOG_SECONDS = 30.0
# Floor of the ZILN log-normal sigma: keeps the likelihood bounded (a sigma -> 0 on one row would
# reward overfitting without limit), and the NLL is measured from it, so the loss is >= 0 (balancers
# such as uw and famo take logs of or divide by the losses).
ZILN_SIGMA_MIN = 0.1


def _log_mse(raw: Tensor, label: Tensor) -> Tensor:
    return F.mse_loss(raw, torch.log1p(label))


def _log_seconds(raw: Tensor) -> Tensor:
    return torch.expm1(raw.clamp(0.0, MAX_LOG_SECONDS))


def _ziln_parts(raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """raw [N, 3] -> (logit of P(W > 0), mu, sigma >= ZILN_SIGMA_MIN), each [N]."""
    logit, mu, sigma_raw = raw.unbind(-1)
    return logit, mu, ZILN_SIGMA_MIN + F.softplus(sigma_raw)


def _ziln_loss(raw: Tensor, label: Tensor) -> Tensor:
    """BCE on W > 0 plus the log-normal NLL of the positive rows, averaged over all rows (the total
    negative log-likelihood per impression). The NLL drops terms that do not depend on the
    parameters (log W, log sqrt(2 pi)) and measures log sigma from its floor, so it is >= 0."""
    logit, mu, sigma = _ziln_parts(raw)
    positive = label > 0
    bce = F.binary_cross_entropy_with_logits(logit, positive.to(raw.dtype))
    z = (torch.log(torch.where(positive, label, torch.ones_like(label))) - mu) / sigma
    nll = torch.log(sigma / ZILN_SIGMA_MIN) + 0.5 * z * z
    return bce + torch.where(positive, nll, torch.zeros_like(nll)).mean()


def _ziln_mean(raw: Tensor) -> Tensor:
    """E[W] = P(W > 0) * exp(mu + sigma^2 / 2), in seconds."""
    logit, mu, sigma = _ziln_parts(raw)
    log_mean = (mu + 0.5 * sigma * sigma).clamp(max=MAX_LOG_SECONDS)
    return torch.sigmoid(logit) * torch.exp(log_mean)


def _zi_gamma_loss(raw: Tensor, label: Tensor) -> Tensor:
    """BCE on W > 0 plus, on the positive rows, the Gamma deviance of W around exp(m) (halved):
    r - log r - 1 with r = W / exp(m), >= 0 and free of units. Its minimiser is exp(m) =
    E[W | W > 0] whatever the shape of the positive part, so the mean stays right where a
    log-normal does not fit (e.g. a heavy left tail of short views)."""
    logit, log_mean = raw.unbind(-1)
    positive = label > 0
    bce = F.binary_cross_entropy_with_logits(logit, positive.to(raw.dtype))
    log_ratio = torch.log(torch.where(positive, label, torch.ones_like(label))) - log_mean
    deviance = torch.exp(log_ratio) - log_ratio - 1.0
    return bce + torch.where(positive, deviance, torch.zeros_like(deviance)).mean()


def _zi_gamma_mean(raw: Tensor) -> Tensor:
    """E[W] = P(W > 0) * E[W | W > 0], in seconds."""
    logit, log_mean = raw.unbind(-1)
    return torch.sigmoid(logit) * torch.exp(log_mean.clamp(max=MAX_LOG_SECONDS))


def _zi_bce_loss(raw: Tensor, label: Tensor) -> Tensor:
    """For a label in [0, 1] that is 0 exactly when nothing happened (completion without a click):
    BCE of P(y > 0) plus, on the positive rows, the soft-label BCE of E[y | y > 0]. Both parts are
    proper scoring rules, so their product estimates E[y]; the noisy conditional part is learned
    from the rows that carry it only."""
    logit, cond_logit = raw.unbind(-1)
    positive = label > 0
    bce = F.binary_cross_entropy_with_logits(logit, positive.to(raw.dtype))
    cond = F.binary_cross_entropy_with_logits(cond_logit, label, reduction="none")
    return bce + torch.where(positive, cond, torch.zeros_like(cond)).mean()


def _zi_bce_mean(raw: Tensor) -> Tensor:
    """E[y] = P(y > 0) * E[y | y > 0], in [0, 1]."""
    logit, cond_logit = raw.unbind(-1)
    return torch.sigmoid(logit) * torch.sigmoid(cond_logit)


LossFn = Callable[[Tensor, Tensor], Tensor]
OutputFn = Callable[[Tensor], Tensor]

# loss name -> (loss(raw, label [N]) -> scalar, output(raw) -> natural units [N]); raw is [N], or
# [N, width] for losses with several raw outputs (ranker.tasks.LOSS_WIDTHS).
LOSSES: dict[str, tuple[LossFn, OutputFn]] = {
    "bce": (F.binary_cross_entropy_with_logits, torch.sigmoid),
    "log_mse": (_log_mse, _log_seconds),
    "mse": (F.mse_loss, lambda raw: raw.clamp_min(0.0)),
    "ziln": (_ziln_loss, _ziln_mean),
    "zi_gamma": (_zi_gamma_loss, _zi_gamma_mean),
    "zi_bce": (_zi_bce_loss, _zi_bce_mean),
}


def task_loss(task: Task, raw: Tensor, label: Tensor) -> Tensor:
    """Mean loss of one task: raw [N] (or [N, width]) model output, label [N] in natural units."""
    return LOSSES[task.loss][0](raw, label.to(raw.dtype))


def task_output(task: Task, raw: Tensor) -> Tensor:
    """Natural-unit prediction from a raw output: probability, seconds >= 0, or completion in [0, 1]."""
    return LOSSES[task.loss][1](raw)
