"""Hostile input for the synthetic regression data: valid shards or a
UsageError. See tests/fuzzing.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tff_pipeline import errors
from tff_pipeline.data import regression


# Finite but huge values (1e300) overflow to inf in float32, with a warning.
@pytest.mark.filterwarnings('ignore::RuntimeWarning')
@fuzzing.deterministic(150)
@given(num_clients=fuzzing.mostly(st.integers(1, 25), st.integers(-2, 25)),
       examples_per_client=fuzzing.mostly(st.integers(1, 40), st.integers(-2, 40)),
       num_features=fuzzing.mostly(st.integers(1, 4), st.integers(-1, 4)),
       true_weights=fuzzing.mostly(st.just(()), st.lists(fuzzing.ANY_FLOAT, max_size=5)
                            .map(tuple)),
       true_bias=fuzzing.mostly(st.floats(-10, 10), fuzzing.ANY_FLOAT),
       noise_std=fuzzing.mostly(st.floats(0, 10), fuzzing.ANY_FLOAT),
       feature_shift=fuzzing.mostly(st.floats(0, 10), fuzzing.ANY_FLOAT),
       weight_heterogeneity=fuzzing.mostly(st.floats(0, 10), fuzzing.ANY_FLOAT),
       size_exponent=fuzzing.mostly(st.floats(0, 10), fuzzing.ANY_FLOAT),
       seed=fuzzing.mostly(st.integers(0, 2**40), fuzzing.ANY_INT))
@example(num_clients=10, examples_per_client=50, num_features=1,
         true_weights=(), true_bias=1.0, noise_std=math.inf, feature_shift=0.0,
         weight_heterogeneity=0.0, size_exponent=0.0, seed=0)
@example(num_clients=10, examples_per_client=50, num_features=1,
         true_weights=(), true_bias=1.0, noise_std=0.1, feature_shift=0.0,
         weight_heterogeneity=0.0, size_exponent=1e-5, seed=0)
@example(num_clients=10, examples_per_client=50, num_features=1,
         true_weights=(), true_bias=1.0, noise_std=0.1, feature_shift=0.0,
         weight_heterogeneity=0.0, size_exponent=0.0, seed=-1)
def test_regression_shards_are_valid_or_a_usage_error(
    num_clients, examples_per_client, num_features, true_weights, true_bias,
    noise_std, feature_shift, weight_heterogeneity, size_exponent, seed):
  spec = regression.RegressionSpec(
      num_clients=num_clients, examples_per_client=examples_per_client,
      num_features=num_features, true_weights=true_weights,
      true_bias=true_bias, noise_std=noise_std, feature_shift=feature_shift,
      weight_heterogeneity=weight_heterogeneity, size_exponent=size_exponent,
      seed=seed)
  try:
    shards = regression.make_regression_shards(spec)
  except errors.UsageError as e:
    event('usage error')
    assert re.search(r'--[a-z_]+|exponent', str(e)), str(e)
    return
  event('shards')
  n = num_clients * examples_per_client
  assert shards.x.shape == (n, num_features) and shards.y.shape == (n, 1)
  sizes = np.bincount(shards.client_ids, minlength=num_clients)
  assert len(sizes) == num_clients and sizes.min() >= 1
  assert np.all(np.diff(shards.client_ids) >= 0)
  moderate = [true_bias, noise_std, feature_shift, weight_heterogeneity,
              *true_weights]
  if all(abs(v) <= 1e6 for v in moderate):
    assert np.all(np.isfinite(shards.x)) and np.all(np.isfinite(shards.y))
