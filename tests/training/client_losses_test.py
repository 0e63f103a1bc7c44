"""The server-side evaluation of clients' losses, against NumPy."""

import numpy as np

from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.training import client_losses


def test_losses_are_each_clients_mean_squared_error():
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=5, examples_per_client=9, num_features=3,
      size_exponent=1.0, seed=4))
  task = tasks.build_regression_task(shards)
  rng = np.random.default_rng(0)
  weights = [rng.normal(size=(3, 1)).astype(np.float32),
             rng.normal(size=(1,)).astype(np.float32)]
  losses = client_losses.ClientLosses(task, weights)
  got = losses([3, 0, 3, 4])
  expected = []
  for k in (3, 0, 3, 4):
    arrays = task.train_data.client_arrays(task.train_data.client_ids[k])
    x = arrays['x'].astype(np.float64)
    y = arrays['y'].astype(np.float64).reshape(-1)
    w = weights[0].astype(np.float64).reshape(-1)
    expected.append(np.mean((x @ w + weights[1][0] - y)**2))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert sorted(losses.known) == [0, 3, 4]
  # Evaluated once per client: later calls reuse the values.
  np.testing.assert_array_equal(losses([4, 0]), got[[3, 1]])
