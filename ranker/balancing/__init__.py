"""Loss balancing for multi-task training: one method per module, a registry and a builder.

Scale-free under one task's rescaling (loss and gradient by s): `emtl`, `imtl_g`, `nash_mtl`,
`famo` and `mgda` with `normalise: true`; tests/ranker/balancing/test_properties.py says why the
others are not.

balancer = build_balancer("emtl", num_tasks=3, params={"rho": 0.1})
weights = balanced_backward(losses, balancer, step, shared_params=model.experts.parameters())
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ranker.balancing._bandit import Bandit
from ranker.balancing._cagrad import CAGrad
from ranker.balancing._dwa import DWA
from ranker.balancing._emtl import EMTL
from ranker.balancing._ew import EW
from ranker.balancing._famo import FAMO
from ranker.balancing._gradnorm import GradNorm
from ranker.balancing._imtl_g import IMTLG
from ranker.balancing._mgda import MGDA
from ranker.balancing._minmax import MinMax
from ranker.balancing._nash_mtl import NashMTL
from ranker.balancing._pcgrad import PCGrad
from ranker.balancing._static import Static
from ranker.balancing._uw import UW
from ranker.balancing.base import Balancer
from ranker.balancing.gramian import (
    balanced_backward,
    gramian_on_params,
    gramian_on_representation,
)

BALANCERS: dict[str, type[Balancer]] = {
    "ew": EW,
    "static": Static,
    "uw": UW,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "imtl_g": IMTLG,
    "cagrad": CAGrad,
    "bandit": Bandit,
    "famo": FAMO,
    "minmax": MinMax,
    "nash_mtl": NashMTL,
    "emtl": EMTL,
}

# Filled by the builder, not by configuration: `regression` is a property of the tasks.
_NOT_PARAMS = ("self", "num_tasks", "regression")


def balancer_params(name: str) -> list[str]:
    """The configurable parameters of method `name`, in constructor order."""
    signature = inspect.signature(BALANCERS[name].__init__)
    return [p for p in signature.parameters if p not in _NOT_PARAMS]


def build_balancer(
    name: str,
    num_tasks: int,
    params: Mapping[str, Any] | None = None,
    *,
    regression: Sequence[bool] | None = None,
) -> Balancer:
    """Build balancer `name` for `num_tasks` tasks; `params` fill its constructor's parameters.

    `regression` flags the regression tasks, for methods that treat them differently (`uw`).
    Raises ValueError naming the valid choices for an unknown method or parameter.
    """
    if name not in BALANCERS:
        raise ValueError(f"unknown balancer {name!r}; valid names: {', '.join(BALANCERS)}")
    params = dict(params or {})
    valid = balancer_params(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for balancer {name!r}; "
            f"valid parameters: {', '.join(valid) or '(none)'}"
        )
    if regression is not None and "regression" in inspect.signature(BALANCERS[name]).parameters:
        params["regression"] = regression
    return BALANCERS[name](num_tasks, **params)


__all__ = [
    "BALANCERS",
    "DWA",
    "EMTL",
    "EW",
    "FAMO",
    "IMTLG",
    "MGDA",
    "UW",
    "Balancer",
    "Bandit",
    "CAGrad",
    "GradNorm",
    "MinMax",
    "NashMTL",
    "PCGrad",
    "Static",
    "balanced_backward",
    "balancer_params",
    "build_balancer",
    "gramian_on_params",
    "gramian_on_representation",
]
