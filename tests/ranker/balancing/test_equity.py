"""Equity on a real training run: var(r / mean r), r_i = L_i / ||g_i|| on a shared trunk.

The toy of `benchmarks.equity` (a regression with loss ~100, a unit-scale regression and a binary
classification). The maths promises no ranking of methods on it (the table in docs/results.md is
measured, not asserted). What it does promise: a method whose whole weighted gradient is
independent of each task's scale (EMTL, IMTL-G and normalised MGDA, whose weights are
K m_i / ||g_i|| with m computed from scale-free quantities) trains the same model when one task's
loss is multiplied by a constant, so its equity curve does not move; equal weighting's does.
"""

from __future__ import annotations

import math

import pytest

from benchmarks.equity import METHODS, Method, equity_run

STEPS = 100
SCALE_FREE = (Method("emtl"), Method("imtl_g"), Method("mgda", {"normalise": True}))
RESCALED = (100.0, 1.0, 0.01)


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_every_balancer_trains_the_toy(method: Method) -> None:
    run = equity_run(method, steps=STEPS)
    assert len(run.equity) == STEPS and all(math.isfinite(v) for v in run.equity)
    assert all(math.isfinite(v) for v in run.final_losses)
    # var(r / mean r) of K positive numbers is at most K - 1 (all of r on one task)
    assert all(0.0 <= v <= 2.0 + 1e-9 for v in run.equity)


@pytest.mark.parametrize("method", SCALE_FREE, ids=str)
def test_scale_free_methods_train_the_same_model_under_rescaled_losses(method: Method) -> None:
    base = equity_run(method, steps=STEPS)
    rescaled = equity_run(method, steps=STEPS, loss_scale=RESCALED)
    # float32 rounding of the scaled losses is the only difference
    assert rescaled.equity == pytest.approx(base.equity, rel=1e-4, abs=1e-6)
    assert rescaled.final_losses == pytest.approx(base.final_losses, rel=1e-4)


def test_equal_weighting_does_not() -> None:
    """The control: the same rescaling changes what EW trains (so the test above can fail)."""
    base = equity_run(Method("ew"), steps=STEPS)
    rescaled = equity_run(Method("ew"), steps=STEPS, loss_scale=RESCALED)
    assert rescaled.final_losses[1] > 1.5 * base.final_losses[1]
