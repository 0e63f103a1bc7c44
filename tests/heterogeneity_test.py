"""Simulated compute budgets: deterministic, bounded, and as configured."""

import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline import heterogeneity


def test_no_heterogeneity_gives_full_budgets():
  h = heterogeneity.ComputeHeterogeneity()
  assert not h.enabled
  assert h.local_steps(0, 1, 3, 60, 5) == (300, False)


def test_straggler_epochs_are_whole_epochs_in_range():
  h = heterogeneity.ComputeHeterogeneity(straggler_fraction=0.5)
  draws = [h.local_steps(7, r, c, 60, 5) for r in range(1, 40)
           for c in range(10)]
  stragglers = [steps for steps, s in draws if s]
  assert 0.35 < len(stragglers) / len(draws) < 0.65
  assert set(stragglers) <= {60, 120, 180, 240, 300}
  assert len(set(stragglers)) == 5
  assert all(steps == 300 for steps, s in draws if not s)


def test_straggler_steps_range():
  h = heterogeneity.ComputeHeterogeneity(
      straggler_fraction=1.0, straggler_budget='steps',
      straggler_min_steps=3, straggler_max_steps=7)
  steps = {h.local_steps(0, r, 0, 10, 1)[0] for r in range(200)}
  assert steps == {3, 4, 5, 6, 7}


def test_capacity_is_fixed_per_client_and_budgets_are_reproducible():
  h = heterogeneity.ComputeHeterogeneity(capacity_profile='uniform',
                                         min_capacity=0.2)
  for client in range(5):
    budgets = {h.local_steps(1, r, client, 10, 2)[0] for r in range(1, 6)}
    assert len(budgets) == 1
    assert 4 <= budgets.pop() <= 20
  capacities = [h.capacity(1, c) for c in range(200)]
  assert 0.2 <= min(capacities) and max(capacities) <= 1.0
  assert np.std(capacities) > 0.15
  assert h.capacity(1, 3) != h.capacity(2, 3)


@pytest.mark.parametrize('kwargs, flag', [
    (dict(straggler_fraction=1.5), '--straggler_fraction=1.5'),
    (dict(straggler_budget='hours'), '--straggler_budget'),
    (dict(straggler_min_steps=0), '--straggler_min_steps=0'),
    (dict(straggler_min_steps=5, straggler_max_steps=2),
     '--straggler_max_steps=2'),
    (dict(capacity_profile='gpu'), '--capacity_profile'),
    (dict(min_capacity=0.0), '--min_capacity=0.0'),
])
def test_bad_settings_name_their_flag(kwargs, flag):
  with pytest.raises(errors.UsageError, match=flag):
    heterogeneity.ComputeHeterogeneity(**kwargs).validate()


def test_minority_profile_slows_exactly_the_feature_skew_minority():
  from tff_pipeline.data import feature_skew  # pylint: disable=g-import-not-at-top
  h = heterogeneity.ComputeHeterogeneity(capacity_profile='minority',
                                         min_capacity=0.25,
                                         slow_client_fraction=0.3)
  skewed = set(feature_skew.skewed_clients(20, 0.3, seed=5).tolist())
  assert len(skewed) == 6
  for client in range(20):
    steps, _ = h.local_steps(5, 1, client, 10, 2, num_clients=20)
    assert steps == (5 if client in skewed else 20)
