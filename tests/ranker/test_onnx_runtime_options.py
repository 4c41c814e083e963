"""How sessions' workers wait: `always` (ORT's default) spins between runs, `run` spins inside a
run and stops at its end, `off` never spins; the service's setting keeps its boolean spellings."""

from __future__ import annotations

import time
from typing import get_args, get_type_hints

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ranker.onnx_model import SPIN_MODES, OnnxModel, RuntimeOptions, SpinMode
from serving.settings import Settings, SettingsError

CONFIG = ("session.intra_op.allow_spinning", "session.force_spinning_stop")


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


def entries(mode: SpinMode) -> tuple[str | None, ...]:
    options = RuntimeOptions(intra_op_threads=2, spinning=mode).session_options()
    found: list[str | None] = []
    for key in CONFIG:
        try:
            found.append(options.get_session_config_entry(key))
        except RuntimeError:  # not set: ORT's default
            found.append(None)
    return tuple(found)


def idle_cpu_after_runs(mode: SpinMode) -> float:
    """The least CPU time this process used in 0.2 s of idling after a run, over three runs."""
    options = RuntimeOptions(intra_op_threads=2, spinning=mode)
    model = OnnxModel(matmul_graph(), options=options)
    x = np.ones((2048, 256), np.float32)
    idle = []
    for _ in range(3):
        (y,) = model.run({"x": x})
        assert y.shape == (2048, 256)
        started = time.process_time()  # every thread of this process
        time.sleep(0.2)
        idle.append(time.process_time() - started)
    return min(idle)


def test_each_mode_sets_ort_spinning_as_documented() -> None:
    assert entries("always") == ("1", None)
    assert entries("run") == ("1", "1")
    assert entries("off") == ("0", None)


def test_only_always_keeps_a_worker_spinning_between_runs() -> None:
    # Spinning after the run is ~0.025 CPU-s per 0.2 s of idling on the 2-core machine.
    assert idle_cpu_after_runs("always") > 0.01
    assert idle_cpu_after_runs("run") < 0.005
    assert idle_cpu_after_runs("off") < 0.005


@pytest.mark.parametrize(
    ("text", "mode"),
    [("0", "off"), ("false", "off"), ("1", "always"), ("TRUE", "always"), ("run", "run")],
)
def test_the_setting_reads_modes_and_the_old_booleans(text: str, mode: str) -> None:
    assert Settings.from_env({"RANKER_ORT_SPINNING": text}).ort_spinning == mode


def test_the_setting_names_the_modes_the_runtime_has() -> None:
    assert set(get_args(get_type_hints(Settings)["ort_spinning"])) == set(SPIN_MODES)
    assert Settings.from_env({}).ort_spinning == "off"
    with pytest.raises(SettingsError, match=r"RANKER_ORT_SPINNING.*'off', 'run' or 'always'"):
        Settings.from_env({"RANKER_ORT_SPINNING": "sometimes"})
