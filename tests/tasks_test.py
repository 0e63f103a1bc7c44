"""Tasks: held-out splits and the per-client (fairness) statistics."""

import dataclasses

import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline import models
from tff_pipeline import tasks
from tff_pipeline.data import regression


def test_per_client_accuracy_stats_by_hand():
  # Client 0: 1/2 right, client 1: 3/3, client 2: 0/1, client 3: no data.
  correct = np.array([1, 0, 1, 1, 1, 0], bool)
  owner = np.array([0, 0, 1, 1, 1, 2])
  stats = tasks.per_client_accuracy_stats(correct, owner, 4)
  accuracies = np.array([0.5, 1.0, 0.0])
  assert stats['client_accuracy_mean'] == pytest.approx(0.5)
  assert stats['client_accuracy_min'] == 0.0
  assert stats['client_accuracy_p10'] == pytest.approx(
      np.percentile(accuracies, 10))
  assert stats['client_accuracy_var'] == pytest.approx(accuracies.var())


def test_split_holdout_is_a_disjoint_reproducible_split():
  parts = [np.arange(0, 10), np.arange(10, 13), np.arange(13, 14)]
  train, held = tasks.split_holdout(parts, 0.2, seed=3)
  assert [len(h) for h in held] == [2, 1, 0]
  for p, t, h in zip(parts, train, held):
    assert sorted(np.concatenate([t, h])) == list(p)
  again, _ = tasks.split_holdout(parts, 0.2, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(train, again))
  with pytest.raises(errors.UsageError, match='--client_holdout_fraction=1.0'):
    tasks.split_holdout(parts, 1.0, seed=3)


def test_mnist_task_reports_per_client_accuracy(mnist_arrays):
  subset = dataclasses.replace(
      mnist_arrays, train_x=mnist_arrays.train_x[:1000],
      train_y=mnist_arrays.train_y[:1000])
  spec = tasks.MnistTaskSpec(model='2nn', partition='shards', num_clients=10,
                             client_holdout_fraction=0.1, seed=0)
  task = tasks.build_mnist_task(spec, subset)
  assert task.train_data.client_sizes().sum() == 900
  weights = models.build_2nn(0).get_weights()
  result = task.evaluate(weights)
  assert {'accuracy', 'loss', 'client_accuracy_mean', 'client_accuracy_p10',
          'client_accuracy_min', 'client_accuracy_var'} <= set(result)
  assert (result['client_accuracy_min'] <= result['client_accuracy_p10']
          <= result['client_accuracy_mean'])
  assert task.facts['client_holdout_examples'] == 100


def test_model_and_data_mismatch_is_refused(mnist_arrays):
  spec = tasks.MnistTaskSpec(model='2nn', num_clients=10)
  task = tasks.build_mnist_task(spec, mnist_arrays)
  with pytest.raises(errors.UsageError, match='expects inputs of shape'):
    dataclasses.replace(task, model_builder=lambda: models.build_linear(0, 3))


def test_client_epoch_is_shuffled_batched_and_untuned():
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=2, examples_per_client=7, num_features=1, size_exponent=0.0,
      seed=0))
  task = tasks.build_regression_task(shards)
  client = task.train_data.client_ids[0]
  epoch = task.client_epoch(client, batch_size=3, shuffle_seed=5)
  batches = [b['x'].numpy() for b in epoch]
  size = task.train_data.num_examples(client)
  assert [len(b) for b in batches] == [3] * (size // 3) + (
      [size % 3] if size % 3 else [])
  assert sorted(np.concatenate(batches).ravel()) == sorted(
      task.train_data.client_arrays(client)['x'].ravel())
  # tf.data autotuning would only add work in the TFF worker.
  assert epoch.options().autotune.enabled is False
