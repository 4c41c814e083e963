"""The quality ceilings on a tiny world: the bound knows more than the factorisation and both
learn something; the bound's prior is the one the simulator draws users from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.quality_ceiling import (
    BOUND,
    FACTORISATION,
    PAST_BOUND,
    TRAIN,
    known_items_bound,
    read_world_log,
    run_seed,
    user_prior,
)
from sim.simulate import simulate
from sim.world import SimulatorConfig, World

TINY = SimulatorConfig(
    users=300,
    items=400,
    authors=60,
    days=6,
    requests_per_day=600,
    oracle=True,
    task_conflict=0.6,
    seed=3,
)


def test_the_bound_beats_the_factorisation_and_both_beat_a_constant(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    simulate(TINY, tmp_path)
    log = read_world_log(tmp_path)
    assert log.rows(0).size and log.rows(1).size and log.rows(2).size
    bound, past, fact = run_seed(TINY, log)
    assert (bound["estimator"], past["estimator"], fact["estimator"]) == (
        BOUND,
        PAST_BOUND,
        FACTORISATION,
    )
    for split in ("valid", "test"):
        click = f"{split}.click.captured_auc"
        assert bound[click] > fact[click] > 0.3, (bound, fact)
        # Known items leave only the users to learn: near the oracle, never far past it.
        assert 0.8 < bound[click] < 1.02
        for task in ("watch_time", "completion"):
            assert 0.3 < bound[f"{split}.{task}.captured_rmse"] < 1.02, bound
        # The trend known when training ended is less than the truth, and still item knowledge.
        assert fact[click] < past[click] <= bound[click] + 0.005, (bound, past, fact)
    assert 1 <= int(fact["epoch"].split(" / ")[0]) <= int(fact["epoch"].split(" / ")[1])


def test_the_past_bound_differs_from_the_bound_only_after_the_training_days(
    tmp_path: Path,
) -> None:
    simulate(TINY, tmp_path)
    log = read_world_log(tmp_path)
    bound, past = known_items_bound(TINY, log)
    train = log.split == TRAIN
    np.testing.assert_array_equal(bound.p_click[train], past.p_click[train])
    np.testing.assert_array_equal(bound.completion_given_click, past.completion_given_click)
    # The trend is a random walk: after training it moves almost every item's click logit.
    assert np.mean(bound.p_click[~train] != past.p_click[~train]) > 0.9


def test_the_bound_prior_is_the_simulator_distribution_of_user_terms() -> None:
    world = World(SimulatorConfig(users=20_000, items=400, authors=60))
    mean, precision = user_prior(world)
    truth = np.concatenate(
        [world.user_latent, world.user_click_bias[:, None], world.user_completion_bias[:, None]],
        axis=1,
    )
    z = (truth - mean.numpy()) * np.sqrt(precision.numpy())
    assert np.abs(z.mean(axis=0)).max() < 0.05
    assert np.abs(z.std(axis=0) - 1).max() < 0.05
