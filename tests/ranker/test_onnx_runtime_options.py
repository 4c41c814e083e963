"""How sessions spin: off (the service's default) still spins inside a run and stops at its end,
so no worker burns a core between requests."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ranker.onnx_model import OnnxModel, RuntimeOptions


def matmul_graph(width: int = 256) -> bytes:
    """x [N, width] @ w [width, width], large enough for ORT to split across its threads."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return bytes(model.SerializeToString())


def test_spinning_off_spins_inside_a_run_and_stops_at_its_end() -> None:
    off = RuntimeOptions(intra_op_threads=2, spinning=False).session_options()
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert off.get_session_config_entry("session.force_spinning_stop") == "1"
    on = RuntimeOptions(intra_op_threads=2, spinning=True).session_options()
    assert on.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(RuntimeError, match="force_spinning_stop"):  # not set: ORT's default
        on.get_session_config_entry("session.force_spinning_stop")

    model = OnnxModel(matmul_graph(), options=RuntimeOptions(intra_op_threads=2, spinning=False))
    x = np.ones((2048, 256), np.float32)
    idle = []
    for _ in range(3):
        (y,) = model.run({"x": x})
        assert y.shape == (2048, 256)
        started = time.process_time()  # every thread of this process
        time.sleep(0.2)
        idle.append(time.process_time() - started)
    # With workers spinning after the run this is ~0.025 CPU-s per 0.2 s on this machine.
    assert min(idle) < 0.005, idle
