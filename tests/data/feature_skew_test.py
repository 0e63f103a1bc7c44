"""Feature skew: exactly the minority clients' rows are transformed."""

import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline.data import feature_skew


def test_minority_rows_are_transformed_and_nothing_else():
  x = np.random.default_rng(0).uniform(size=(40, 784)).astype(np.float32)
  parts = [np.arange(k * 4, k * 4 + 4) for k in range(10)]
  skewed, minority = feature_skew.apply_feature_skew(x, parts, 'invert', 0.3,
                                                     seed=1)
  assert len(minority) == 3
  rows = np.concatenate([parts[k] for k in minority])
  np.testing.assert_allclose(skewed[rows], 1 - x[rows])
  others = np.setdiff1d(np.arange(40), rows)
  np.testing.assert_array_equal(skewed[others], x[others])
  assert not np.shares_memory(skewed, x)


def test_rotate90_turns_the_image():
  image = np.zeros((1, 784), np.float32)
  image[0, 5] = 1.0  # row 0, column 5
  rotated = feature_skew.apply_feature_skew(image, [np.array([0])],
                                            'rotate90', 1.0, seed=0)[0]
  # np.rot90 moves (row 0, col 5) to (row 22, col 0).
  assert rotated.reshape(28, 28)[22, 0] == 1.0 and rotated.sum() == 1.0


def test_none_and_bad_fraction():
  x = np.ones((4, 784), np.float32)
  same, minority = feature_skew.apply_feature_skew(
      x, [np.arange(4)], 'none', 0.5, seed=0)
  assert same is x and len(minority) == 0
  with pytest.raises(errors.UsageError, match='--feature_skew_fraction'):
    feature_skew.skewed_clients(10, 1.5, 0)
  with pytest.raises(errors.UsageError, match="--feature_skew='blur'"):
    feature_skew.apply_feature_skew(x, [np.arange(4)], 'blur', 0.5, seed=0)
