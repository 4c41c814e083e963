"""Self-auxiliary heads must be smaller than their towers."""

import pytest

from ranker.models import AuxConfig, MultiTaskTrainingModel, build_model
from ranker.models.aux_heads import check_smaller_than_tower, make_aux_head
from ranker.models.towers import Tower

# expert outputs of 8 units: every tower reads 8 inputs (completion 9, with the click feed)
CONFIG = {
    "embedding_dim": 4,
    "num_experts": 2,
    "expert_units": [8],
    "feeds": {"completion": "click"},
}


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("tower_units", "aux", "refused"),
    [
        ([], AuxConfig(form="linear"), True),  # tower = one dense layer: the linear head equals it
        ([], AuxConfig(form="pool", pool_size=2), False),  # pooled: fewer inputs than the tower
        ([8], AuxConfig(form="bottleneck", bottleneck_units=8), True),  # same shape as the tower
        ([8], AuxConfig(form="bottleneck", bottleneck_units=4), False),
        ([8], AuxConfig(form="linear"), False),
    ],
)
def test_a_head_not_smaller_than_its_tower_is_refused(
    tower_units: list[int], aux: AuxConfig, refused: bool, spec
) -> None:
    model = build_model("mmoe", spec, config={**CONFIG, "tower_units": tower_units})
    if not refused:
        wrapper = MultiTaskTrainingModel(model, aux)
        for task, head in wrapper.aux_heads.items():
            assert params(head) < params(model.towers.towers[task])
        return
    with pytest.raises(ValueError, match="must be smaller than its tower") as err:
        MultiTaskTrainingModel(model, aux)
    # the message names the head and both parameter counts (the first task is refused first)
    head = make_aux_head(model.towers.in_dim("click"), aux)
    tower = model.towers.towers["click"]
    message = str(err.value)
    assert f"{aux.form} aux head of task 'click'" in message
    assert f"has {params(head)} parameters" in message
    assert f"its tower's {params(tower)}" in message


def test_equal_size_is_refused_and_one_parameter_less_is_not() -> None:
    tower = Tower(8, [], 0.0)  # 9 parameters
    with pytest.raises(ValueError, match="has 9 parameters, not fewer than its tower's 9"):
        check_smaller_than_tower("click", "linear", make_aux_head(8, AuxConfig()), tower)
    check_smaller_than_tower("click", "linear", make_aux_head(7, AuxConfig()), tower)  # 8 < 9
