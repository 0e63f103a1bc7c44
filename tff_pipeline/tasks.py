"""A task: a Keras model builder, client data, preprocessing and evaluation.

As in google-research/federated, a task is a frozen object that checks at
construction that the model accepts the data. The training loop needs nothing
else to run any algorithm on it.

* `build_mnist_task`: partitioned MNIST, paper CNN or 2NN, centralized
  evaluation on the 10000-image test set.
* `build_regression_task`: synthetic linear-regression shards, linear model
  with MSE loss, evaluated by pooled MSE and distance to the closed-form
  optimum.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import errors
from tff_pipeline import models
from tff_pipeline import settings
from tff_pipeline.data import client_data as client_data_lib
from tff_pipeline.data import feature_skew as feature_skew_lib
from tff_pipeline.data import mnist as mnist_lib
from tff_pipeline.data import partition as partition_lib
from tff_pipeline.data import regression as regression_lib

Weights = list[np.ndarray]


def _client_dataset_options() -> tf.data.Options:
  """tf.data options of every client's training data.

  Autotuning is off: a client's pipeline (slice, shuffle, batch) has nothing
  to tune, and each of the round's iterators would otherwise start tf.data's
  autotuning machinery in the TFF worker. Measured on the paper CNN (10
  clients of 600 images a round), it made rounds about 12% faster
  (benchmarks/README.md). Values are unaffected.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return options


_CLIENT_DATASET_OPTIONS = _client_dataset_options()


@dataclasses.dataclass(frozen=True)
class Task:
  """What to train, on which clients, and how to judge the global model.

  Attributes:
    name: Short name, e.g. 'mnist' or 'regression'.
    model_builder: Returns a fresh, deterministically initialised Keras model.
    loss_builder: Returns the Keras training loss.
    metrics_builder: Returns the Keras metrics reported by client training.
    train_data: The clients' training data.
    evaluate: Maps the global model's trainable weights (Keras order) to
      centralized evaluation metrics, e.g. {'accuracy': .., 'loss': ..}.
    key_metric: The evaluation metric shown on the progress bar.
    summary_extras: Maps final weights to extra `summary.json` fields.
    facts: Static facts about the task, recorded in `summary.json`.
    model_builder_at_width: Returns the model's width-w sub-model (HeteroFL,
      `models/width.py`), initialised as `model_builder`'s; None if the
      task has no width-scaled models.
    evaluate_at_width: Maps a width-w sub-model's trainable weights and w to
      the metrics of `evaluate`; None without width-scaled models.
  """

  name: str
  model_builder: Callable[[], tf.keras.Model]
  loss_builder: Callable[[], tf.keras.losses.Loss]
  metrics_builder: Callable[[], list[tf.keras.metrics.Metric]]
  train_data: client_data_lib.ArrayClientData
  evaluate: Callable[[Weights], dict[str, float]]
  key_metric: str
  summary_extras: Callable[[Weights], dict[str, Any]] = lambda weights: {}
  facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  model_builder_at_width: Callable[[float], tf.keras.Model] | None = None
  evaluate_at_width: Callable[[Weights, float], dict[str, float]] | None = None

  def __post_init__(self):
    model = self.model_builder()
    spec = self.train_data.element_type_structure
    model_input = tuple(model.input_shape[1:])
    data_input = tuple(spec['x'].shape)
    if model_input != data_input:
      raise errors.UsageError(
          f'model {model.name} expects inputs of shape {model_input}, but the '
          f'{self.name} data has shape {data_input}'
      )

  def batch_input_spec(self) -> collections.OrderedDict:
    """Element spec of a batched client dataset."""
    return collections.OrderedDict(
        (k, tf.TensorSpec((None,) + tuple(s.shape), s.dtype))
        for k, s in self.train_data.element_type_structure.items()
    )

  def tff_model_fn(self) -> Callable[[], tff.learning.models.VariableModel]:
    """A no-argument function building the TFF model, for the algorithms."""
    input_spec = self.batch_input_spec()

    def model_fn() -> tff.learning.models.VariableModel:
      return tff.learning.models.from_keras_model(
          self.model_builder(),
          loss=self.loss_builder(),
          input_spec=input_spec,
          metrics=self.metrics_builder(),
      )

    return model_fn

  def client_epoch(
      self,
      client_id: str,
      *,
      batch_size: int,
      shuffle_seed: int,
  ) -> tf.data.Dataset:
    """One epoch of the client's training data, shuffled and batched.

    Shuffled with `shuffle_seed`, anew on each pass when repeated
    (`reshuffle_each_iteration=True`); `batch_size == -1` gives one batch of
    all the client's examples.
    """
    size = self.train_data.num_examples(client_id)
    dataset = self.train_data.create_tf_dataset_for_client(client_id)
    dataset = dataset.shuffle(max(size, 1), seed=shuffle_seed,
                              reshuffle_each_iteration=True)
    dataset = dataset.batch(max(size, 1) if batch_size == -1 else batch_size)
    return dataset.with_options(_CLIENT_DATASET_OPTIONS)

  def steps_per_epoch(self, client_id: str, batch_size: int) -> int:
    """Number of batches in one epoch of the client's data."""
    size = self.train_data.num_examples(client_id)
    if batch_size == -1:
      return 1 if size else 0
    return -(-size // batch_size)


def _logits(model: tf.keras.Model, x: np.ndarray,
            batch_size: int = 2000) -> np.ndarray:
  return np.concatenate([
      model(x[i:i + batch_size], training=False).numpy()
      for i in range(0, len(x), batch_size)
  ])


def per_client_accuracy_stats(correct: np.ndarray,
                              client_of_example: np.ndarray,
                              num_clients: int) -> dict[str, float]:
  """Fairness view: statistics of the clients' accuracies.

  Every client counts once (unweighted), whatever its size; clients without
  held-out examples are skipped.

  Returns:
    client_accuracy_mean, client_accuracy_p10 (10th percentile, linear
    interpolation), client_accuracy_min and client_accuracy_var (variance
    across clients).
  """
  counts = np.bincount(client_of_example, minlength=num_clients)
  hits = np.bincount(client_of_example, weights=correct.astype(np.float64),
                     minlength=num_clients)
  accuracies = hits[counts > 0] / counts[counts > 0]
  return {
      'client_accuracy_mean': float(accuracies.mean()),
      'client_accuracy_p10': float(np.percentile(accuracies, 10)),
      'client_accuracy_min': float(accuracies.min()),
      'client_accuracy_var': float(accuracies.var()),
  }


def _classifier_evaluator(
    model_builder: Callable[[], tf.keras.Model],
    x: np.ndarray,
    y: np.ndarray,
    holdout: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None,
) -> Callable[[Weights], dict[str, float]]:
  """Centralized evaluation of given weights.

  Accuracy and cross-entropy on (x, y); with `holdout = (x, y,
  client_of_example, num_clients)`, also the per-client accuracy statistics
  on each client's held-out examples.

  The Keras model is rebuilt on every call: TFF builds its own copies of the
  model inside graph contexts, and Keras then refuses to run models built
  earlier outside them.
  """
  labels = np.asarray(y).reshape(-1)

  def evaluate(weights: Weights) -> dict[str, float]:
    model = model_builder()
    model.set_weights(weights)
    logits = _logits(model, x)
    result = {
        'loss': float(np.mean(tf.keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))),
        'accuracy': float(np.mean(np.argmax(logits, axis=1) == labels)),
    }
    if holdout is not None:
      hx, hy, owner, num_clients = holdout
      correct = np.argmax(_logits(model, hx), axis=1) == hy
      result.update(per_client_accuracy_stats(correct, owner, num_clients))
    return result

  return evaluate


def split_holdout(
    client_indices: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Splits each client's examples into (train, held-out) index arrays.

  Each client with at least two examples keeps round(fraction * n_i) of them,
  at least one, chosen at random from (seed, client), for evaluation.
  """
  if not 0.0 <= fraction < 1.0:
    raise errors.UsageError(
        f'--client_holdout_fraction={fraction} must be in [0, 1)')
  train, held = [], []
  for k, idx in enumerate(client_indices):
    count = 0
    if fraction > 0 and len(idx) >= 2:
      count = min(len(idx) - 1, max(1, round(fraction * len(idx))))
    rng = np.random.default_rng([seed, _HOLDOUT_STREAM, k])
    chosen = np.zeros(len(idx), bool)
    chosen[rng.choice(len(idx), size=count, replace=False)] = True
    train.append(idx[~chosen])
    held.append(idx[chosen])
  return train, held


# Separates the held-out split's random stream from the others of --seed.
_HOLDOUT_STREAM = 0x484F_4C44


@dataclasses.dataclass(frozen=True)
class MnistTaskSpec:
  """How to build the MNIST task.

  The settings with a flag are declared below; `num_clients` is the shared
  `--num_clients` (`config.NUM_CLIENTS`), the number of clients the 60000
  training images are split into, and `seed` the shared `--seed`: it seeds
  the partition and the model initialisation.
  """

  model: str = settings.setting(
      'cnn', choices=models.MNIST_MODELS, help='{choices}')
  partition: str = settings.setting(
      'iid', choices=partition_lib.PARTITIONS,
      help='Client partition: {choices}')
  num_clients: int = 100
  partition_params: partition_lib.PartitionParams = settings.nested(
      partition_lib.PartitionParams())
  client_holdout_fraction: float = settings.setting(
      0.0,
      help='Share of each client\'s examples held out of training to report '
      'per-client accuracy (mean, 10th percentile, worst, variance); 0 '
      'turns it off.')
  feature_skew: str = settings.setting(
      'none', choices=feature_skew_lib.FEATURE_SKEWS,
      help='Feature-distribution skew of a minority of clients: {choices}')
  feature_skew_fraction: float = settings.setting(
      0.0, flag_default=0.2,
      help='Share of clients in the --feature_skew minority.')
  mnist_path: str = settings.setting(
      '', help='Keras mnist.npz or a directory of the four IDX files; empty '
      'uses the packaged copy.')
  seed: int = 0


def build_mnist_task(
    spec: MnistTaskSpec, arrays: mnist_lib.MnistArrays | None = None
) -> Task:
  """Partitioned MNIST with the FedAvg paper's models.

  Args:
    spec: The task's settings.
    arrays: Already loaded MNIST arrays (tests pass subsets); loaded from
      `spec.mnist_path` when None.
  """
  model_builder_for_seed = models.MODELS.get(spec.model)
  partition_lib.PARTITIONS.get(spec.partition)
  if arrays is None:
    arrays = mnist_lib.load_mnist(spec.mnist_path)
  indices = partition_lib.partition_indices(
      spec.partition, arrays.train_y, spec.num_clients, spec.seed,
      spec.partition_params,
  )
  train_x, minority = feature_skew_lib.apply_feature_skew(
      arrays.train_x, indices, spec.feature_skew, spec.feature_skew_fraction,
      spec.seed)
  indices, held = split_holdout(indices, spec.client_holdout_fraction,
                                spec.seed)
  train_data = client_data_lib.ArrayClientData(
      collections.OrderedDict(x=train_x, y=arrays.train_y), indices
  )
  holdout = None
  if spec.client_holdout_fraction > 0:
    held_all = np.concatenate(held)
    owner = np.repeat(np.arange(spec.num_clients), [len(h) for h in held])
    holdout = (train_x[held_all], arrays.train_y[held_all], owner,
               spec.num_clients)

  def model_builder() -> tf.keras.Model:
    return model_builder_for_seed(spec.seed, mnist_lib.IMAGE_SIZE)

  def loss_builder() -> tf.keras.losses.Loss:
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def metrics_builder() -> list[tf.keras.metrics.Metric]:
    return [tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')]

  evaluate = _classifier_evaluator(model_builder, arrays.test_x,
                                   arrays.test_y, holdout)

  def model_builder_at_width(width: float) -> tf.keras.Model:
    return model_builder_for_seed(spec.seed, mnist_lib.IMAGE_SIZE,
                                  width=width)

  evaluators: dict[float, Callable[[Weights], dict[str, float]]] = {}

  def evaluate_at_width(weights: Weights, width: float) -> dict[str, float]:
    if width not in evaluators:
      evaluators[width] = _classifier_evaluator(
          functools.partial(model_builder_at_width, width), arrays.test_x,
          arrays.test_y, holdout)
    return evaluators[width](weights)

  sizes = train_data.client_sizes()
  return Task(
      name='mnist',
      model_builder=model_builder,
      loss_builder=loss_builder,
      metrics_builder=metrics_builder,
      train_data=train_data,
      evaluate=evaluate,
      key_metric='accuracy',
      model_builder_at_width=model_builder_at_width,
      evaluate_at_width=evaluate_at_width,
      facts={
          'data_source': arrays.source,
          'model': spec.model,
          'model_parameters': models.count_parameters(model_builder()),
          'partition': spec.partition,
          'num_clients': spec.num_clients,
          'client_size_min': int(sizes.min()),
          'client_size_max': int(sizes.max()),
          'num_test_examples': int(len(arrays.test_y)),
          'client_holdout_examples': int(sum(len(h) for h in held)),
          'feature_skew': spec.feature_skew,
          'feature_skew_clients': minority.tolist(),
      },
  )


def flatten_linear_weights(weights: Weights) -> np.ndarray:
  """[kernel (d, 1), bias (1,)] -> [w_1..w_d, b]."""
  return np.concatenate([np.ravel(w) for w in weights]).astype(np.float64)


def build_regression_task(shards: regression_lib.RegressionShards) -> Task:
  """Linear regression on synthetic shards, judged against the optimum."""
  d = shards.spec.num_features
  optimum = shards.pooled_optimum()
  train_data = shards.client_data()

  def model_builder() -> tf.keras.Model:
    return models.build_linear(shards.spec.seed, d)

  def loss_builder() -> tf.keras.losses.Loss:
    return tf.keras.losses.MeanSquaredError()

  def metrics_builder() -> list[tf.keras.metrics.Metric]:
    return [tf.keras.metrics.MeanSquaredError(name='mse')]

  x64 = shards.x.astype(np.float64)
  y64 = shards.y.astype(np.float64).reshape(-1)

  def evaluate(weights: Weights) -> dict[str, float]:
    flat = flatten_linear_weights(weights)
    residual = x64 @ flat[:d] + flat[d] - y64
    return {
        'loss': float(np.mean(residual**2)),
        'distance_to_optimum': float(np.linalg.norm(flat - optimum)),
    }

  def summary_extras(weights: Weights) -> dict[str, Any]:
    return {
        'final_weights': flatten_linear_weights(weights).tolist(),
        'optimum_weights': optimum.tolist(),
    }

  return Task(
      name='regression',
      model_builder=model_builder,
      loss_builder=loss_builder,
      metrics_builder=metrics_builder,
      train_data=train_data,
      evaluate=evaluate,
      key_metric='distance_to_optimum',
      summary_extras=summary_extras,
      facts={
          'num_clients': shards.num_clients,
          'num_examples': int(len(shards.y)),
          'num_features': d,
          'true_weights': shards.spec.weights().tolist(),
          'true_bias': shards.spec.true_bias,
      },
  )
