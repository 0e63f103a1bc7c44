"""Synthetic regression shards: reproducible, and the optimum is exact."""

import io

import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline.data import regression


def test_teaching_case_recovers_two_and_one():
  shards = regression.make_regression_shards(regression.RegressionSpec())
  assert shards.x.shape == (500, 1) and shards.y.shape == (500, 1)
  w, b = shards.pooled_optimum()
  assert abs(w - 2.0) < 0.05 and abs(b - 1.0) < 0.05


def test_optimum_is_the_normal_equations_solution():
  spec = regression.RegressionSpec(
      num_clients=7, num_features=3, feature_shift=1.0,
      weight_heterogeneity=0.5, size_exponent=1.5, seed=4)
  shards = regression.make_regression_shards(spec)
  x = np.concatenate([shards.x, np.ones((len(shards.x), 1))], 1).astype(float)
  expected = np.linalg.solve(x.T @ x, x.T @ shards.y.astype(float)).ravel()
  np.testing.assert_allclose(shards.pooled_optimum(), expected, rtol=1e-9)
  # The gradient of the pooled MSE vanishes there.
  residual = x @ expected - shards.y.ravel()
  np.testing.assert_allclose(x.T @ residual / len(x), 0, atol=1e-9)


def test_same_seed_same_shards():
  spec = regression.RegressionSpec(num_features=2, weight_heterogeneity=1.0,
                                   size_exponent=1.0, seed=9)
  a = regression.make_regression_shards(spec)
  b = regression.make_regression_shards(spec)
  c = regression.make_regression_shards(
      regression.RegressionSpec(num_features=2, weight_heterogeneity=1.0,
                                size_exponent=1.0, seed=10))
  np.testing.assert_array_equal(a.x, b.x)
  np.testing.assert_array_equal(a.client_ids, b.client_ids)
  assert not np.array_equal(a.x, c.x)


def test_heterogeneity_knobs_act():
  spec = regression.RegressionSpec(num_clients=20, weight_heterogeneity=1.0,
                                   size_exponent=1.0, seed=1)
  shards = regression.make_regression_shards(spec)
  assert np.std(shards.client_weights) > 0.5
  sizes = np.bincount(shards.client_ids)
  assert sizes.sum() == 20 * 50 and sizes.max() > 2 * sizes.min()


def test_npz_round_trip():
  shards = regression.make_regression_shards(regression.RegressionSpec())
  with np.load(io.BytesIO(shards.npz_bytes())) as data:
    assert sorted(data.files) == ['client_ids', 'x', 'y']
    np.testing.assert_allclose(regression.least_squares(data['x'], data['y']),
                               shards.pooled_optimum())


def test_bad_spec_names_the_flag():
  with pytest.raises(errors.UsageError, match='--noise_std=-1'):
    regression.make_regression_shards(regression.RegressionSpec(noise_std=-1))
  with pytest.raises(errors.UsageError, match='--true_weights has 2 values'):
    regression.make_regression_shards(
        regression.RegressionSpec(true_weights=(1.0, 2.0)))
