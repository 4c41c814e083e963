"""The registry and builder."""

from __future__ import annotations

import pytest

from ranker.balancing import BALANCERS, UW, Balancer, balancer_params, build_balancer


@pytest.mark.parametrize("name", list(BALANCERS))
def test_every_method_builds_with_defaults(name: str) -> None:
    balancer = build_balancer(name, 3)
    assert isinstance(balancer, Balancer) and balancer.num_tasks == 3


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown balancer 'emlt'") as err:
        build_balancer("emlt", 3)
    assert all(name in str(err.value) for name in BALANCERS)


def test_unknown_parameter_lists_valid_parameters() -> None:
    with pytest.raises(ValueError, match="unknown parameter") as err:
        build_balancer("emtl", 3, {"rho": 0.2, "temperature": 1.0})
    message = str(err.value)
    assert "temperature" in message
    for param in ("rho", "eta", "beta", "eps", "update_every"):
        assert param in message
    with pytest.raises(ValueError, match=r"valid parameters: \(none\)"):
        build_balancer("ew", 3, {"update_every": 2})


def test_params_and_regression_reach_the_constructor() -> None:
    emtl = build_balancer("emtl", 3, {"rho": 0.2, "update_every": 4})
    assert emtl.rho == 0.2 and emtl.update_every == 4  # type: ignore[attr-defined]
    uw = build_balancer("uw", 2, regression=[True, False])
    assert isinstance(uw, UW) and uw.factor.tolist() == [0.5, 1.0]
    assert build_balancer("mgda", 2, regression=[True, False]).num_tasks == 2  # ignored there
    assert balancer_params("uw") == ["init_log_var"]
