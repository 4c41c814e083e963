import pytest
import torch

from ranker.models import MODELS, AuxConfig, MultiTaskTrainingModel, build_model
from ranker.tasks import build_tasks, tasks_from_dicts

CONFIG = {"embedding_dim": 4, "expert_units": [16], "tower_units": [8]}


def test_unknown_kind_lists_valid(spec) -> None:
    with pytest.raises(
        ValueError, match=r"unknown model kind 'moe'; valid: \['mmoe', 'ple', 'shared_bottom'\]"
    ):
        build_model("moe", spec)


def test_unknown_field_lists_valid(spec) -> None:
    with pytest.raises(
        ValueError, match=r"unknown mmoe config fields \['experts'\]; valid: \[.*'num_experts'"
    ):
        build_model("mmoe", spec, config={"experts": 4})
    with pytest.raises(ValueError, match="bottom_units"):
        build_model("shared_bottom", spec, config={"expert_units": [4]})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_experts": 0}, "num_experts must be an integer >= 1"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ({"expert_units": []}, "expert_units needs at least one layer"),
        ({"tower_units": [8, -1]}, "tower_units must be a list of positive integers"),
        ({"feeds": {"click": "completion"}}, "source must come before the target"),
        ({"feeds": {"completion": "dwell"}}, "unknown task"),
    ],
)
def test_bad_config_values(spec, config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("mmoe", spec, config=config)


def test_tasks_by_name_or_object(spec) -> None:
    a = build_model("mmoe", spec, ["click", "completion"], CONFIG)
    b = build_model("mmoe", spec, build_tasks(["click", "completion"]), CONFIG)
    assert a.task_names == b.task_names == ("click", "completion")
    with pytest.raises(ValueError, match="output order"):
        build_model("mmoe", spec, ["completion", "click"], CONFIG)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_hparams_rebuild_same_model(kind: str, spec, make_inputs) -> None:
    config = {"embedding_dim": 4, "tower_units": [8], "feeds": {"completion": "click"}}
    model = build_model(kind, spec, build_tasks(losses={"watch_time": "mse"}), config).eval()
    h = model.hparams()
    assert h["config"]["feeds"] == {"completion": "click"}
    clone = build_model(h["kind"], spec, tasks_from_dicts(h["tasks"]), h["config"]).eval()
    clone.load_state_dict(model.state_dict())
    x = make_inputs(spec, 1, 5)
    torch.testing.assert_close(model(x), clone(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("aux", [None, AuxConfig(form="bottleneck")])
def test_param_groups_cover_every_parameter_once(kind: str, aux, spec) -> None:
    wrapper = MultiTaskTrainingModel(build_model(kind, spec, config={"embedding_dim": 4}), aux)
    groups = wrapper.param_groups(lr=1e-3, task_lr={"watch_time": 1e-4})
    assert [g["name"] for g in groups] == ["shared", "click", "watch_time", "completion"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-3, 1e-4, 1e-3]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in wrapper.parameters()}
    shared = {id(p) for p in groups[0]["params"]}
    assert {id(p) for p in wrapper.model.inputs.parameters()} <= shared  # embeddings: shared group
    if aux is not None:
        assert {id(p) for p in wrapper.aux_heads["click"].parameters()} <= {
            id(p) for p in groups[1]["params"]
        }
    torch.optim.Adam(groups)  # the groups are valid optimizer input
    with pytest.raises(ValueError, match="unknown tasks"):
        wrapper.param_groups(1e-3, {"dwell": 1e-3})
