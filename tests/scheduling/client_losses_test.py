"""The server-side evaluation of clients' losses, against NumPy."""

import numpy as np

from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.scheduling import client_losses


def _task():
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=5, examples_per_client=9, num_features=3,
      size_exponent=1.0, seed=4))
  return tasks.build_regression_task(shards)


def _mse(task, k, weights, rows=None):
  arrays = task.train_data.client_arrays(task.train_data.client_ids[k])
  x = arrays['x'].astype(np.float64)
  y = arrays['y'].astype(np.float64).reshape(-1)
  if rows is not None:
    x, y = x[rows], y[rows]
  w = weights[0].astype(np.float64).reshape(-1)
  return np.mean((x @ w + weights[1][0] - y)**2)


def test_losses_are_each_clients_mean_squared_error():
  task = _task()
  rng = np.random.default_rng(0)
  weights = [rng.normal(size=(3, 1)).astype(np.float32),
             rng.normal(size=(1,)).astype(np.float32)]
  losses = client_losses.ClientLosses(task, weights)
  got = losses([3, 0, 3, 4])
  expected = [_mse(task, k, weights) for k in (3, 0, 3, 4)]
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert sorted(losses.known) == [0, 3, 4]
  # Evaluated once per client: later calls reuse the values.
  np.testing.assert_array_equal(losses([4, 0]), got[[3, 1]])


def test_a_sample_of_examples_per_client():
  task = _task()
  weights = [np.ones((3, 1), np.float32), np.zeros((1,), np.float32)]
  sizes = task.train_data.client_sizes()
  k = int(np.argmax(sizes))
  assert sizes[k] > 4
  sampled = client_losses.ClientLosses(task, weights, max_examples=4, seed=1,
                                       round_num=7)
  rng = np.random.default_rng([1, client_losses._SAMPLE_STREAM, 7, k])
  rows = np.sort(rng.choice(sizes[k], 4, replace=False))
  np.testing.assert_allclose(sampled([k]), [_mse(task, k, weights, rows)],
                             rtol=1e-5)
  # Another round draws another sample; a large bound evaluates everything.
  other = client_losses.ClientLosses(task, weights, max_examples=4, seed=1,
                                     round_num=8)
  assert other([k])[0] != sampled([k])[0]
  whole = client_losses.ClientLosses(task, weights, max_examples=10**6)
  np.testing.assert_allclose(whole([k]), [_mse(task, k, weights)], rtol=1e-5)


def test_the_rounds_of_an_evaluator_share_one_model():
  task = _task()
  evaluate = client_losses.evaluator(task)
  rng = np.random.default_rng(1)
  for round_num in (1, 2):
    weights = [rng.normal(size=(3, 1)).astype(np.float32),
               rng.normal(size=(1,)).astype(np.float32)]
    np.testing.assert_allclose(evaluate(weights, round_num)([1, 2]),
                               [_mse(task, k, weights) for k in (1, 2)],
                               rtol=1e-5)
