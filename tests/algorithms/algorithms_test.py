"""Algorithms: FedSGD is gradient descent, FedProx(mu=0) is FedAvg."""

import collections
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import models
from tff_pipeline import tasks
from tff_pipeline.algorithms import compensation_client_work
from tff_pipeline.data import regression
from tff_pipeline.training import loop

SPEC = regression.RegressionSpec(num_clients=6, examples_per_client=25,
                                 num_features=2, feature_shift=0.5,
                                 weight_heterogeneity=0.5, size_exponent=1.0,
                                 seed=11)


def _config(tmp_path, name, **changes):
  base = config_lib.TrainingConfig(
      experiment_name=name, root_output_dir=str(tmp_path), total_rounds=5,
      clients_per_round=6, client_batch_size=-1,
      client_optimizer=config_lib.OptimizerConfig(learning_rate=0.1),
      server_optimizer=config_lib.OptimizerConfig(learning_rate=0.3,
                                                  role='server'),
      seed=4)
  return dataclasses.replace(base, **changes)


def test_fedsgd_is_gradient_descent_on_the_pooled_data(task, shards, tmp_path,
                                                       tff_runtime):
  """Full participation, full-batch client gradients, weights n_k: the
  averaged gradient is the pooled gradient, so every iterate is GD's."""
  result = loop.run_federated(task, _config(tmp_path, 'sgd',
                                            algorithm='fedsgd'),
                              runtime=tff_runtime, progress=False)
  design = np.concatenate([shards.x, np.ones((len(shards.x), 1))],
                          1).astype(np.float64)
  target = shards.y.astype(np.float64).ravel()
  theta = np.zeros(3)
  for row in result.history:
    theta = theta - 0.3 * 2.0 / len(design) * design.T @ (
        design @ theta - target)
    assert row['eval/loss'] == pytest.approx(
        np.mean((design @ theta - target) ** 2), rel=1e-5)
  np.testing.assert_allclose(
      tasks.flatten_linear_weights(result.final_weights), theta, atol=1e-5)


def test_fedsgd_with_batches_is_still_the_full_gradient(task, shards, tmp_path,
                                                        tff_runtime):
  """Batches of 7 change nothing: the client sums gradients over its data."""
  full = loop.run_federated(task, _config(tmp_path, 'a', algorithm='fedsgd'),
                            runtime=tff_runtime, progress=False)
  batched = loop.run_federated(
      task, _config(tmp_path, 'b', algorithm='fedsgd', client_batch_size=7),
      runtime=tff_runtime, progress=False)
  for x, y in zip(full.final_weights, batched.final_weights):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_fedprox_with_zero_mu_is_fedavg(task, tmp_path, tff_runtime):
  changes = dict(clients_per_round=4, client_batch_size=5,
                 client_epochs_per_round=2)
  fedavg = loop.run_federated(task, _config(tmp_path, 'avg', **changes),
                              runtime=tff_runtime, progress=False)
  fedprox = loop.run_federated(
      task, _config(tmp_path, 'prox', algorithm='fedprox',
                    proximal_strength=0.0, **changes),
      runtime=tff_runtime, progress=False)
  for x, y in zip(fedavg.final_weights, fedprox.final_weights):
    np.testing.assert_allclose(x, y, atol=1e-6)
  # A strong proximal term keeps clients near the global model: the first
  # round moves the model less than FedAvg's.
  strong = loop.run_federated(
      task, _config(tmp_path, 'strong', algorithm='fedprox',
                    proximal_strength=2.0, total_rounds=1, **changes),
      runtime=tff_runtime, progress=False)
  one_avg = loop.run_federated(
      task, _config(tmp_path, 'one', total_rounds=1, **changes),
      runtime=tff_runtime, progress=False)
  moved = lambda r: np.linalg.norm(  # pylint: disable=g-long-lambda
      tasks.flatten_linear_weights(r.final_weights))
  assert moved(strong) < 0.8 * moved(one_avg)


def test_fedsgd_refuses_the_compensated_aggregator(task, tmp_path):
  with pytest.raises(errors.UsageError, match='runs none'):
    loop.build_algorithm(task, _config(tmp_path, 'x', algorithm='fedsgd',
                                       aggregator='compensated'))


def _proximal_gd(x, y, lr, mu, steps, sign):
  """NumPy: full-batch GD on MSE + (mu/2)||w - w0||^2 from w0 = 0.

  sign=+1 is FedProx; sign=-1 reproduces TFF 0.87's proximal client work.
  """
  design = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
  target = y.astype(np.float64).ravel()
  theta = np.zeros(design.shape[1])
  for _ in range(steps):
    grad = 2.0 / len(design) * design.T @ (design @ theta - target)
    theta = theta - lr * (grad + sign * mu * theta)
  return theta


def test_fedprox_proximal_term_matches_the_paper(tmp_path, tff_runtime):
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=1, examples_per_client=8, seed=0))
  task = tasks.build_regression_task(shards)
  config = _config(tmp_path, 'prox', algorithm='fedprox',
                   proximal_strength=2.0, clients_per_round=1,
                   total_rounds=1, client_epochs_per_round=4,
                   client_optimizer=config_lib.OptimizerConfig(
                       learning_rate=0.05),
                   server_optimizer=config_lib.OptimizerConfig(
                       learning_rate=1.0, role='server'))
  result = loop.run_federated(task, config, runtime=tff_runtime,
                              progress=False)
  expected = _proximal_gd(shards.x, shards.y, 0.05, 2.0, 4, sign=+1)
  np.testing.assert_allclose(
      tasks.flatten_linear_weights(result.final_weights), expected, atol=1e-5)


def test_tff_0_87_fed_prox_has_the_sign_of_its_proximal_term_flipped(
    tff_runtime):
  """Why `fedprox` does not use `build_weighted_fed_prox`: in TFF 0.87 its
  clients descend on loss - (mu/2)||w - w0||^2. If this test starts failing,
  TFF fixed it and `fedprox` can go back to TFF's builder."""
  del tff_runtime
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=1, examples_per_client=8, seed=0))
  spec = collections.OrderedDict(x=tf.TensorSpec([None, 1]),
                                 y=tf.TensorSpec([None, 1]))

  def model_fn():
    return tff.learning.models.from_keras_model(
        models.build_linear(0, 1), loss=tf.keras.losses.MeanSquaredError(),
        input_spec=spec)

  process = tff.learning.algorithms.build_weighted_fed_prox(
      model_fn, proximal_strength=2.0,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.05),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0))
  data = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=shards.x, y=shards.y)).batch(8).repeat(4)
  state = process.next(process.initialize(), [data]).state
  got = np.concatenate([np.ravel(w) for w in
                        state.global_model_weights.trainable])
  np.testing.assert_allclose(
      got, _proximal_gd(shards.x, shards.y, 0.05, 2.0, 4, sign=-1),
      atol=1e-5)
  assert not np.allclose(
      got, _proximal_gd(shards.x, shards.y, 0.05, 2.0, 4, sign=+1),
      atol=1e-3)


def test_iterator_loop_folds_like_dataset_reduce():
  dataset = tf.data.Dataset.range(1, 8).batch(3)

  def step(state, batch):
    total, count = state
    return total * 2 + tf.reduce_sum(batch), count + 1

  initial = (tf.constant(0, tf.int64), tf.constant(0))
  expected = dataset.reduce(initial, step)
  got = tf.function(
      lambda: compensation_client_work.iterate(dataset, initial, step))()
  assert [int(v) for v in got] == [int(v) for v in expected]
  empty = tf.function(lambda: compensation_client_work.iterate(
      dataset.take(0), initial, step))()
  assert [int(v) for v in empty] == [0, 0]


@pytest.mark.parametrize('algorithm', ['fedavg', 'fedprox', 'fedsgd'])
def test_client_training_is_an_iterator_loop_not_a_dataset_reduce(
    task, tmp_path, algorithm):
  """TFF's worker runs Grappler-free graphs; `Dataset.reduce` bodies are
  never pruned there (see tff_pipeline.algorithms), so no client loop may be
  one."""
  config = _config(tmp_path, algorithm, algorithm=algorithm)
  process = loop.build_algorithm(task, config).process
  ops = collections.Counter()

  def count(block):
    if isinstance(block, tff.framework.CompiledComputation):
      graph = tf.compat.v1.GraphDef()
      block.proto.tensorflow.graph_def.Unpack(graph)
      ops.update(node.op for node in graph.node)
      for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return block, False

  tff.framework.transform_postorder(process.next.to_building_block(), count)
  assert ops['While'] >= 1
  assert ops['ReduceDataset'] == 0
