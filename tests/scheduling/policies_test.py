"""Round policies on a fixed table: who is dropped, how many steps each."""

import math

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline.scheduling import policies

# Five sampled clients. Full-work times: 10*1+2 = 12, 20*1+1 = 21,
# 10*3+2 = 32, 4*2+0 = 8 and 10*0.5+10 = 15 seconds.
WORK = policies.RoundWork(
    full_steps=np.array([10, 20, 10, 4, 10]),
    budget_steps=np.array([10, 5, 2, 4, 10]),
    step_seconds=np.array([1.0, 1.0, 3.0, 2.0, 0.5]),
    comm_seconds=np.array([2.0, 1.0, 2.0, 0.0, 10.0]),
    wanted=3)
FULL = [12.0, 21.0, 32.0, 8.0, 15.0]


def _plan(name, work=WORK, seconds=0.0, quantile=0.0):
  return policies.ROUND_POLICIES.get(name).plan(
      work, policies.Deadline(seconds, quantile))


def test_full_seconds():
  np.testing.assert_allclose(WORK.full_seconds(), FULL)


def test_wait_all_runs_full_work_and_waits_for_the_slowest():
  plan = _plan('wait_all')
  assert plan.kept.all()
  np.testing.assert_array_equal(plan.steps, WORK.full_steps)
  np.testing.assert_allclose(plan.seconds, FULL)
  assert plan.round_seconds == 32.0
  assert plan.deadline_seconds is None and plan.num_dropped == 0


def test_budgets_run_todays_budgets_and_only_measure():
  plan = _plan('budgets')
  assert plan.kept.all()
  np.testing.assert_array_equal(plan.steps, WORK.budget_steps)
  np.testing.assert_allclose(plan.seconds, [12, 6, 8, 8, 15])
  assert plan.round_seconds == 15.0


def test_deadline_drop_keeps_the_first_m_to_finish():
  # By 20 s, clients 3 (8 s), 0 (12 s) and 4 (15 s) have finished: the
  # wanted 3, so the round ends at the third finish, 15 s.
  plan = _plan('deadline_drop', seconds=20.0)
  np.testing.assert_array_equal(plan.kept, [True, False, False, True, True])
  np.testing.assert_array_equal(plan.steps, [10, 0, 0, 4, 10])
  assert plan.round_seconds == 15.0
  assert plan.deadline_seconds == 20.0 and plan.num_dropped == 2
  assert not plan.deadline_missed


def test_deadline_drop_with_too_few_finishers_lasts_until_the_deadline():
  plan = _plan('deadline_drop', seconds=13.0)
  np.testing.assert_array_equal(plan.kept, [True, False, False, True, False])
  assert plan.round_seconds == 13.0


def test_deadline_drop_with_no_finisher_waits_for_the_first():
  plan = _plan('deadline_drop', seconds=5.0)
  np.testing.assert_array_equal(plan.kept, [False, False, False, True, False])
  assert plan.round_seconds == 8.0 and plan.deadline_missed


def test_a_quantile_deadline_is_the_quantile_of_full_work_times():
  plan = _plan('deadline_drop', quantile=0.5)
  assert plan.deadline_seconds == pytest.approx(float(np.median(FULL)))
  # Median 15 s: clients 3, 0 and 4 finish by then, exactly three.
  np.testing.assert_array_equal(plan.kept, [True, False, False, True, True])
  assert _plan('deadline_drop', quantile=1.0).deadline_seconds == 32.0


def test_deadline_partial_runs_the_steps_that_fit():
  plan = _plan('deadline_partial', seconds=14.0)
  # floor((14 - comm) / step seconds), at most the full work:
  # 12 -> 10, 13 -> 13, 4 -> 4, 7 -> 4, 8 -> 8.
  expected = [min(f, math.floor((14.0 - c) / s)) for f, s, c in zip(
      WORK.full_steps, WORK.step_seconds, WORK.comm_seconds)]
  assert expected == [10, 13, 4, 4, 8]
  np.testing.assert_array_equal(plan.steps, expected)
  assert plan.kept.all()
  np.testing.assert_allclose(plan.seconds, [12, 14, 14, 8, 14])
  assert plan.round_seconds == 14.0


def test_deadline_partial_drops_who_cannot_run_one_step():
  # By 4 s: client 2 needs 2 + 3 s for one step, client 4 10 s to
  # communicate; the others fit some steps.
  plan = _plan('deadline_partial', seconds=4.0)
  np.testing.assert_array_equal(plan.kept, [True, True, False, True, False])
  np.testing.assert_array_equal(plan.steps, [2, 3, 0, 2, 0])
  assert plan.round_seconds == 4.0 and plan.num_dropped == 2
  np.testing.assert_allclose(plan.seconds, [4, 4, 32, 4, 15])


def test_deadline_partial_with_no_one_in_time_keeps_the_fastest_step():
  plan = _plan('deadline_partial', seconds=0.5)
  # One step: 3, 2, 5, 2 and 10.5 s; the first of the two 2 s clients.
  np.testing.assert_array_equal(plan.kept, [False, True, False, False, False])
  np.testing.assert_array_equal(plan.steps, [0, 1, 0, 0, 0])
  assert plan.round_seconds == 2.0 and plan.deadline_missed


def test_a_client_without_data_only_communicates():
  work = policies.RoundWork(
      full_steps=np.array([0, 4]), budget_steps=np.array([0, 4]),
      step_seconds=np.array([0.0, 1.0]), comm_seconds=np.array([1.0, 1.0]),
      wanted=2)
  plan = _plan('deadline_partial', work, seconds=3.0)
  np.testing.assert_array_equal(plan.kept, [True, True])
  np.testing.assert_array_equal(plan.steps, [0, 2])


@pytest.mark.parametrize('name,factor,wanted,num_clients,expected', [
    ('deadline_drop', 1.3, 10, 100, 13),
    ('deadline_drop', 1.3, 7, 100, 10),   # ceil(9.1)
    ('deadline_drop', 1.3, 10, 11, 11),
    ('deadline_drop', 1.0, 10, 100, 10),
    ('deadline_partial', 1.3, 10, 100, 10),
    ('wait_all', 2.0, 10, 100, 10),
])
def test_sample_size(name, factor, wanted, num_clients, expected):
  policy = policies.ROUND_POLICIES.get(name)
  assert policy.sample_size(wanted, factor, num_clients) == expected


def test_an_unknown_policy_names_the_flag():
  with pytest.raises(errors.UsageError, match='--round_policy'):
    policies.ROUND_POLICIES.get('fastest')


def test_config_knows_which_policies_need_a_deadline():
  assert set(config_lib.DEADLINE_POLICIES) == {
      name for name in policies.ROUND_POLICIES
      if policies.ROUND_POLICIES.get(name).uses_deadline}


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    data=st.lists(st.tuples(st.integers(0, 50), st.floats(1e-3, 10.0),
                            st.floats(0.0, 20.0)), min_size=1, max_size=15),
    wanted=st.integers(1, 15),
    quantile=st.floats(0.01, 1.0))
def test_deadline_invariants(data, wanted, quantile):
  """Whatever the table: kept clients finish by the deadline (unless nobody
  could), the round outlasts every kept client, drop keeps at most m full
  workers, partial never exceeds the full work."""
  full_steps, step_seconds, comm = (np.array(c) for c in zip(*data))
  work = policies.RoundWork(full_steps=full_steps, budget_steps=full_steps,
                            step_seconds=step_seconds, comm_seconds=comm,
                            wanted=wanted)
  for name in config_lib.DEADLINE_POLICIES:
    plan = _plan(name, work, quantile=quantile)
    kept = plan.kept
    assert kept.any()
    assert plan.round_seconds >= plan.seconds[kept].max() - 1e-9
    if not plan.deadline_missed:
      assert (plan.seconds[kept] <= plan.deadline_seconds + 1e-9).all()
      assert plan.round_seconds <= plan.deadline_seconds + 1e-9
    assert (plan.steps <= full_steps).all() and (plan.steps[~kept] == 0).all()
    if name == 'deadline_drop':
      assert kept.sum() <= wanted
      np.testing.assert_array_equal(plan.steps[kept], full_steps[kept])
