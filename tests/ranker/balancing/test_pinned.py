"""Every method's weights on one fixed 3-task input, pinned to catch unintended changes.

The values were computed once from this implementation after the maths tests passed. A change
here must be explained by a deliberate change of the method.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ranker.balancing import BALANCERS, build_balancer

PARAMS: dict[str, dict[str, Any]] = {"dwa": {"window": 1}, "static": {"weights": [0.5, 1.0, 2.0]}}
PINNED = {
    "ew": [1.00000000, 1.00000000, 1.00000000],
    "static": [0.50000000, 1.00000000, 2.00000000],
    "uw": [0.50000000, 1.00000000, 1.00000000],
    "dwa": [0.40765573, 1.96037343, 0.63197084],
    "gradnorm": [0.99323019, 0.97817785, 1.02859196],
    "mgda": [1.44802224, 0.00000000, 1.55197776],
    "pcgrad": [1.13997395, 1.00000000, 1.15154575],
    "imtl_g": [1.38983260, -0.99071517, 1.94228898],
    "cagrad": [1.73214990, 0.86206897, 1.44809284],
    "bandit": [0.70370093, 1.42944342, 0.86685566],
    "famo": [1.97591269, 0.50505089, 0.51903642],
    "minmax": [0.00000000, 0.00000000, 3.00000000],
    "nash_mtl": [1.73639309, 0.70804513, 1.63775660],
    "emtl": [0.60837604, 0.25526753, 0.70216860],
}


def test_every_method_is_pinned() -> None:
    assert set(PINNED) == set(BALANCERS)


@pytest.mark.parametrize("name", list(PINNED))
def test_pinned_weights(name: str) -> None:
    """Weights after three calls (so stateful methods have history) on seeded inputs."""
    gen = torch.Generator().manual_seed(2024)
    balancer = build_balancer(name, 3, PARAMS.get(name), regression=[True, False, False])
    for _ in range(3):
        jac = torch.randn(3, 5, generator=gen, dtype=torch.float64)
        losses = torch.exp(torch.randn(3, generator=gen, dtype=torch.float64))
        w = balancer.weights(losses, jac @ jac.T)
    expected = torch.tensor(PINNED[name], dtype=torch.float64)
    torch.testing.assert_close(w.detach(), expected, rtol=0.0, atol=1e-5)
