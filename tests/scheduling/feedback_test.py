"""The feedback rule: work factors, their bounds, the steps they give."""

import numpy as np
import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline.scheduling import feedback
from tff_pipeline.scheduling import records

ON = config_lib.FeedbackConfig(feedback=True, feedback_power=1.0,
                             feedback_max_factor=2.0)


def test_factors_only_raise_lagging_clients_and_are_bounded():
  losses = np.array([0.5, 1.0, 1.5, 4.0, np.nan, 0.0, np.inf])
  np.testing.assert_allclose(
      feedback.work_factors(ON, losses, 1.0),
      [1.0, 1.0, 1.5, 2.0, 1.0, 1.0, 1.0])
  squared = config_lib.FeedbackConfig(feedback=True, feedback_power=2.0,
                                    feedback_max_factor=3.0)
  np.testing.assert_allclose(
      feedback.work_factors(squared, np.array([1.2, 1.5, 2.0]), 1.0),
      [1.44, 2.25, 3.0])
  # Off, or no population loss: no change.
  off = config_lib.FeedbackConfig()
  np.testing.assert_array_equal(
      feedback.work_factors(off, np.array([9.0]), 1.0), [1.0])
  for lbar in (np.nan, 0.0, -1.0):
    np.testing.assert_array_equal(
        feedback.work_factors(ON, np.array([9.0]), lbar), [1.0])
  # A huge power does not overflow past the bound.
  huge = config_lib.FeedbackConfig(feedback=True, feedback_power=1e6,
                                 feedback_max_factor=5.0)
  np.testing.assert_array_equal(
      feedback.work_factors(huge, np.array([3.0, 0.5]), 1.0), [5.0, 1.0])


def test_steps_stay_within_the_deadline_and_never_shrink():
  planned = np.array([10, 10, 10, 4, 10, 0])
  limit = np.array([np.inf, 12, 30, 4, 5, np.inf])
  factors = np.array([1.5, 1.5, 1.5, 2.0, 1.5, 2.0])
  np.testing.assert_array_equal(
      feedback.compensated_steps(planned, limit, factors),
      [15, 12, 15, 4, 10, 0])
  # ceil: 1.1 * 10 is 11 (not 12 from rounding error), 1.15 * 10 -> 12.
  np.testing.assert_array_equal(
      feedback.compensated_steps(np.array([10, 10]), np.full(2, np.inf),
                                 np.array([1.1, 1.15])), [11, 12])


def test_steps_that_fit_the_bound():
  np.testing.assert_array_equal(
      feedback.steps_that_fit(10.0, np.array([1.0, 3.0, 2.0, 0.0, 1.0]),
                              np.array([0.5, 1.0, 12.0, 1.0, 10.0])),
      [9, 3, 0, np.inf, 0])
  np.testing.assert_array_equal(
      feedback.steps_that_fit(np.inf, np.array([1.0]), np.array([1.0])),
      [np.inf])


def test_apply_uses_the_records_and_reports_facts():
  rec = records.ClientRecords.new(5).updated(
      1, [0, 1, 2, 3], losses=[1.0, 3.0, 1.0, 1.0])
  sizes = np.array([10, 10, 10, 10, 10])
  # Lbar = 1.5: client 1 lags by 2x; client 4 was never seen.
  out = feedback.apply(ON, rec, sizes, np.array([1, 4, 0]),
                       planned_steps=np.array([6, 6, 6]),
                       max_steps=np.array([20.0, 20.0, 20.0]))
  np.testing.assert_allclose(out.factors, [2.0, 1.0, 1.0])
  np.testing.assert_array_equal(out.local_steps, [12, 6, 6])
  assert out.facts == {'feedback/population_loss': 1.5,
                       'feedback/num_boosted': 1.0,
                       'feedback/extra_steps': 6.0,
                       'feedback/max_factor': 2.0}
  # Fresh losses of the round's clients replace the records' values, in
  # Lbar too: losses [1, 1, 1, 3] -> Lbar 1.5, client 3 lags by 2x.
  fresh = feedback.apply(ON, rec, sizes, np.array([1, 3]),
                         planned_steps=np.array([6, 6]),
                         max_steps=np.array([9.0, 20.0]),
                         client_losses=np.array([1.0, 3.0]))
  np.testing.assert_allclose(fresh.factors, [1.0, 2.0])
  np.testing.assert_array_equal(fresh.local_steps, [6, 12])
  assert fresh.facts['feedback/population_loss'] == 1.5
  off = feedback.apply(config_lib.FeedbackConfig(), rec, sizes,
                       np.array([1]), np.array([6]), np.array([np.inf]))
  np.testing.assert_array_equal(off.local_steps, [6])
  assert off.facts == {}


def test_bad_input():
  with pytest.raises(errors.UsageError, match='--feedback_max_factor'):
    config_lib.FeedbackConfig(feedback_max_factor=0.5)
  with pytest.raises(errors.UsageError, match='--feedback_power'):
    config_lib.FeedbackConfig(feedback_power=-1.0)
  with pytest.raises(ValueError, match='shapes differ'):
    feedback.compensated_steps(np.ones(2), np.ones(3), np.ones(2))
  with pytest.raises(ValueError, match='factors'):
    feedback.compensated_steps(np.ones(1), np.ones(1), np.array([0.5]))
  with pytest.raises(ValueError, match='planned'):
    feedback.compensated_steps(np.array([-1.0]), np.ones(1), np.ones(1))
