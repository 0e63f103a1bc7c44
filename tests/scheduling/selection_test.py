"""Client selection against TFF's sampler and hand/NumPy references."""

import math

import numpy as np
import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline.scheduling import records
from tff_pipeline.scheduling import selection


def population(sizes, seconds, rec=None, losses=None):
  n = len(sizes)
  return selection.Population(
      client_ids=[f'c{i:02d}' for i in range(n)],
      num_examples=np.asarray(sizes),
      full_work_seconds=np.asarray(seconds, np.float64),
      records=rec if rec is not None else records.ClientRecords.new(n),
      losses=losses)


def config(**kwargs):
  return config_lib.SelectionConfig(**kwargs)


# ----------------------------------------------------------------- uniform


def test_uniform_is_tffs_sampler():
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  ids = [f'client_{i}' for i in range(37)]
  pop = population(np.ones(37), np.ones(37))
  pop = selection.Population(ids, pop.num_examples, pop.full_work_seconds,
                             pop.records)
  for seed in (0, 1, 7, 2**31 - 1):
    sample = tff.simulation.build_uniform_sampling_fn(
        ids, replace=False, random_seed=seed)
    for round_num in (1, 2, 3, 50, 1000):
      for m in (1, 10, 37):
        chosen = selection.select(config(), seed, round_num, m, pop)
        assert chosen.client_ids(pop) == sample(round_num, m)
        assert chosen.facts == {}


# -------------------------------------------------------- power of choice

# A fixed table: 6 clients, their data sizes and losses of the global model.
POC_SIZES = np.array([10, 20, 30, 40, 50, 60])
POC_LOSSES = np.array([0.3, 2.0, 0.1, 1.5, 0.7, 1.5])


def poc_population():
  calls = []

  def losses(indices):
    calls.append(np.array(indices))
    return POC_LOSSES[indices]

  return population(POC_SIZES, np.ones(6), losses=losses), calls


def test_power_of_choice_with_every_client_a_candidate_keeps_the_top_m():
  pop, calls = poc_population()
  chosen = selection.select(config(client_selection='power_of_choice',
                                   poc_candidates=6), 3, 4, 3, pop)
  # Losses 2.0 (client 1), then the tie 1.5 (clients 3 and 5) in candidate
  # order.
  assert set(chosen.indices.tolist()) == {1, 3, 5}
  assert chosen.indices[0] == 1
  assert len(calls) == 1 and sorted(calls[0].tolist()) == list(range(6))
  assert chosen.facts['selection/candidates'] == 6
  assert chosen.facts['selection/mean_candidate_loss'] == pytest.approx(
      POC_LOSSES.mean())
  assert chosen.facts['selection/mean_selected_loss'] == pytest.approx(5 / 3)
  assert chosen.facts['selection/evaluation_seconds'] >= 0


def test_power_of_choice_keeps_the_highest_loss_candidates():
  pop, calls = poc_population()
  cfg = config(client_selection='power_of_choice', poc_candidates=4)
  for round_num in range(1, 30):
    chosen = selection.select(cfg, 11, round_num, 2, pop)
    candidates = calls[-1]
    assert candidates.size == 4 and np.unique(candidates).size == 4
    # Reference: the 2 highest losses of the candidates (stable for ties).
    order = np.argsort(-POC_LOSSES[candidates], kind='stable')[:2]
    np.testing.assert_array_equal(chosen.indices, candidates[order])


def test_power_of_choice_candidates_follow_the_data_fractions():
  # With d = 1 and m = 1 the chosen client is the candidate, drawn with
  # probability p_k = n_k / sum n.
  sizes = np.array([0, 1, 2, 7])
  pop = population(sizes, np.ones(4), losses=lambda idx: np.zeros(len(idx)))
  cfg = config(client_selection='power_of_choice', poc_candidates=1)
  counts = np.zeros(4)
  rounds = 4000
  for round_num in range(1, rounds + 1):
    counts[selection.select(cfg, 5, round_num, 1, pop).indices[0]] += 1
  assert counts[0] == 0
  np.testing.assert_allclose(counts / rounds, sizes / sizes.sum(), atol=0.025)


def test_power_of_choice_default_d_is_twice_m():
  pop, calls = poc_population()
  selection.select(config(client_selection='power_of_choice'), 0, 1, 2, pop)
  assert calls[-1].size == 4
  selection.select(config(client_selection='power_of_choice'), 0, 1, 4, pop)
  assert calls[-1].size == 6  # 2m = 8 is capped at the population


def test_power_of_choice_ranks_non_finite_losses_last():
  pop = population(POC_SIZES, np.ones(6),
                   losses=lambda idx: np.where(np.asarray(idx) == 2, np.nan,
                                               -1.0 * np.asarray(idx)))
  chosen = selection.select(config(client_selection='power_of_choice',
                                   poc_candidates=6), 0, 1, 5, pop)
  assert chosen.indices.tolist() == [0, 1, 3, 4, 5]


def test_power_of_choice_bad_input():
  pop, _ = poc_population()
  with pytest.raises(errors.UsageError,
                     match=r'--poc_candidates=2 must be at least '
                     r'--clients_per_round=3'):
    selection.select(config(client_selection='power_of_choice',
                            poc_candidates=2), 0, 1, 3, pop)
  with pytest.raises(errors.UsageError, match='--poc_candidates=7'):
    selection.select(config(client_selection='power_of_choice',
                            poc_candidates=7), 0, 1, 3, pop)
  sparse = population([0, 0, 5, 5], np.ones(4), losses=lambda i: i * 1.0)
  with pytest.raises(errors.UsageError, match='2 clients that have data'):
    selection.select(config(client_selection='power_of_choice',
                            poc_candidates=3), 0, 1, 2, sparse)


# --------------------------------------------------------------------- oort

# A fixed table of 8 clients: data sizes, expected full-work seconds, and
# records after rounds 1..3 (clients 6 and 7 never seen; client 5 seen but
# its loss unknown).
OORT_SIZES = np.array([100, 50, 200, 100, 80, 60, 120, 90])
OORT_SECONDS = np.array([10.0, 40.0, 20.0, 5.0, 80.0, 30.0, 10.0, 50.0])


def oort_records():
  r = records.ClientRecords.new(8)
  r = r.updated(1, [0, 1, 2], losses=[1.0, 2.0, 0.5])
  r = r.updated(2, [3, 4], losses=[0.8, 3.0])
  return r.updated(3, [0, 5], losses=[1.2, np.nan])


def oort_reference_utility(round_num, alpha, preferred):
  """Oort's utility by hand, for the table above."""
  loss = {0: 1.2, 1: 2.0, 2: 0.5, 3: 0.8, 4: 3.0}
  last = {0: 3, 1: 1, 2: 1, 3: 2, 4: 2}
  stat = {k: OORT_SIZES[k] * loss[k] for k in loss}
  lo, hi = min(stat.values()), max(stat.values())
  utility = {}
  for k in loss:
    u = (stat[k] - lo) / (hi - lo) + math.sqrt(
        0.1 * math.log(round_num) / last[k])
    if OORT_SECONDS[k] > preferred:
      u *= (preferred / OORT_SECONDS[k])**alpha
    utility[k] = u
  return utility


def test_oort_utility_matches_the_hand_reference():
  pop = population(OORT_SIZES, OORT_SECONDS, oort_records())
  for alpha, preferred in ((2.0, 0.0), (0.5, 25.0), (0.0, 1.0)):
    cfg = config(client_selection='oort', oort_alpha=alpha,
                 oort_preferred_seconds=preferred)
    t = preferred or np.median(OORT_SECONDS)
    assert selection.oort_preferred_seconds(cfg, pop) == t
    utility = selection.oort_utilities(cfg, 4, pop)
    expected = oort_reference_utility(4, alpha, t)
    for k in range(8):
      if k in expected:
        assert utility[k] == pytest.approx(expected[k], rel=1e-12), k
      else:
        assert np.isnan(utility[k]), k


def test_oort_without_exploration_and_cutoff_one_takes_the_top_utilities():
  pop = population(OORT_SIZES, OORT_SECONDS, oort_records())
  cfg = config(client_selection='oort', oort_exploration=0.0,
               oort_exploration_min=0.0, oort_cutoff=1.0)
  expected = oort_reference_utility(4, 2.0, np.median(OORT_SECONDS))
  top3 = sorted(expected, key=expected.get, reverse=True)[:3]
  for seed in range(5):
    chosen = selection.select(cfg, seed, 4, 3, pop)
    assert sorted(chosen.indices.tolist()) == sorted(top3)
    assert chosen.facts['selection/explored'] == 0
    assert chosen.facts['selection/exploration_share'] == 0
    assert chosen.facts['selection/mean_utility'] == pytest.approx(
        np.mean([expected[k] for k in top3]))
    assert chosen.facts['selection/never_seen'] == 2


def test_oort_cutoff_admits_clients_near_the_quota():
  pop = population(OORT_SIZES, OORT_SECONDS, oort_records())
  cfg = config(client_selection='oort', oort_exploration=0.0,
               oort_exploration_min=0.0, oort_cutoff=0.5)
  utility = oort_reference_utility(4, 2.0, np.median(OORT_SECONDS))
  ranked = sorted(utility, key=utility.get, reverse=True)
  admitted = {k for k in utility if utility[k] >= 0.5 * utility[ranked[1]]}
  seen = set()
  for seed in range(200):
    chosen = selection.select(cfg, seed, 4, 2, pop).indices.tolist()
    assert set(chosen) <= admitted
    seen.update(chosen)
  assert seen == admitted


def test_oort_explores_never_seen_clients():
  pop = population(OORT_SIZES, OORT_SECONDS, oort_records())
  # eps = 0.5 for 4 clients: 2 exploited, 2 explored (clients 6 and 7).
  cfg = config(client_selection='oort', oort_exploration=0.5,
               oort_exploration_decay=1.0, oort_exploration_min=0.5)
  chosen = selection.select(cfg, 0, 4, 4, pop)
  assert set(chosen.indices[2:].tolist()) == {6, 7}
  assert chosen.facts['selection/explored'] == 2
  # Only 2 never-seen clients: the rest is exploited.
  cfg = config(client_selection='oort', oort_exploration=1.0,
               oort_exploration_decay=1.0, oort_exploration_min=1.0)
  chosen = selection.select(cfg, 0, 4, 4, pop)
  assert {6, 7} <= set(chosen.indices.tolist())
  assert chosen.facts['selection/explored'] == 2
  # More clients than are exploitable or unexplored: client 5 (seen, loss
  # unknown) fills the round.
  chosen = selection.select(cfg, 0, 4, 8, pop)
  assert sorted(chosen.indices.tolist()) == list(range(8))


def test_oort_exploration_prefers_large_fast_clients():
  # Nothing seen: every client is explored, in proportion to
  # n_i (T / t_i)^alpha. Client 0 is 4x slower than T with alpha 2: 1/16.
  sizes = np.array([100, 100, 100])
  seconds = np.array([40.0, 10.0, 10.0])
  pop = population(sizes, seconds)
  cfg = config(client_selection='oort', oort_preferred_seconds=10.0)
  counts = np.zeros(3)
  for round_num in range(1, 3001):
    counts[selection.select(cfg, 1, round_num, 1, pop).indices[0]] += 1
  prior = np.array([1 / 16, 1.0, 1.0])
  np.testing.assert_allclose(counts / counts.sum(), prior / prior.sum(),
                             atol=0.02)


def test_oort_exploration_share_decays_to_its_floor():
  cfg = config(client_selection='oort')
  assert selection.oort_exploration(cfg, 1) == pytest.approx(0.9 * 0.98)
  assert selection.oort_exploration(cfg, 10) == pytest.approx(0.9 * 0.98**10)
  assert selection.oort_exploration(cfg, 1000) == 0.2


def test_oort_system_factor():
  cfg = config(client_selection='oort', oort_alpha=2.0)
  np.testing.assert_allclose(
      selection.oort_system_factor(cfg, np.array([5.0, 10.0, 20.0]), 10.0),
      [1.0, 1.0, 0.25])


# ------------------------------------------------------------ every selector


@pytest.mark.parametrize('name', list(selection.SELECTORS))
def test_selection_is_a_function_of_seed_and_round(name):
  rec = oort_records()
  pop = population(OORT_SIZES, OORT_SECONDS, rec,
                   losses=lambda idx: np.asarray(idx, np.float64) % 3)
  cfg = config(client_selection=name)
  first = selection.select(cfg, 3, 5, 4, pop)
  again = selection.select(cfg, 3, 5, 4, pop)
  np.testing.assert_array_equal(first.indices, again.indices)
  assert np.unique(first.indices).size == 4
  assert all(0 <= i < 8 for i in first.indices)
  others = {tuple(selection.select(cfg, 3, r, 4, pop).indices)
            for r in range(6, 16)}
  others |= {tuple(selection.select(cfg, s, 5, 4, pop).indices)
             for s in range(4, 14)}
  assert len(others) > 1


def test_registry_and_bad_input():
  assert selection.SELECTORS.names() == ['uniform', 'power_of_choice',
                                         'oort']
  pop = population(np.ones(3), np.ones(3))
  with pytest.raises(errors.UsageError, match='--client_selection=.best.'):
    selection.select(config(client_selection='best'), 0, 1, 1, pop)
  with pytest.raises(errors.UsageError, match='--clients_per_round'):
    selection.select(config(), 0, 1, 4, pop)
  with pytest.raises(errors.UsageError, match='--oort_cutoff'):
    config(oort_cutoff=1.5)
  with pytest.raises(errors.UsageError, match='--poc_candidates'):
    config(poc_candidates=-1)
  with pytest.raises(ValueError, match='full-work times'):
    population(np.ones(3), [1.0, 0.0, 1.0])
  with pytest.raises(ValueError, match='records of 4'):
    population(np.ones(3), np.ones(3), records.ClientRecords.new(4))
