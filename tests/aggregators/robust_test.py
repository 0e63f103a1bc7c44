"""Coordinate-wise median and trimmed mean: NumPy definitions, then TFF.

The NumPy references are checked on hand-made numbers; the TFF processes are
checked against the references (rtol 1e-6), and FedAvg with the median
against the median of the clients' one-step SGD models computed by hand.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import models
from tff_pipeline.aggregators import robust

NAN = np.nan
INF = np.inf

# ----------------------------------------------------------------------------
# NumPy references on hand-made numbers.
# ----------------------------------------------------------------------------


def test_median_of_an_odd_number_of_clients_is_the_middle_value():
  updates = np.array([[1.0, 10.0], [5.0, -2.0], [3.0, 4.0]], np.float32)
  result = robust.coordinate_median(updates, np.ones(3))
  np.testing.assert_array_equal(result, [3.0, 4.0])
  assert result.dtype == np.float32


def test_median_of_an_even_number_of_clients_averages_the_two_middle():
  updates = np.array([[1.0], [20.0], [2.0], [10.0]], np.float32)
  np.testing.assert_array_equal(
      robust.coordinate_median(updates, np.ones(4)), [6.0])


def test_median_keeps_the_update_shape():
  updates = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
  result = robust.coordinate_median(updates, np.ones(3))
  np.testing.assert_array_equal(result, updates[1])


@pytest.mark.parametrize('updates, trim_fraction, expected', [
    # m = 5, floor(0.2 * 5) = 1: drop 1 and 100.
    ([1, 2, 3, 4, 100], 0.2, (2 + 3 + 4) / 3),
    # floor(0.25 * 5) = 1 as well.
    ([1, 2, 3, 4, 100], 0.25, (2 + 3 + 4) / 3),
    # floor(0.1 * 5) = 0: the plain mean.
    ([1, 2, 3, 4, 100], 0.1, 110 / 5),
    ([1, 2, 3, 4, 100], 0.0, 110 / 5),
    # floor(0.4 * 5) = 2: only the median is left.
    ([1, 2, 3, 4, 100], 0.4, 3.0),
    # m = 6 (even), floor(0.2 * 6) = 1: drop -50 and 100.
    ([100, 2, 3, -50, 4, 5], 0.2, (2 + 3 + 4 + 5) / 4),
    # m = 6, floor(0.49 * 6) = 2: the two middle values.
    ([100, 2, 3, -50, 4, 5], 0.49, (3 + 4) / 2),
])
def test_trimmed_mean_of_known_numbers(updates, trim_fraction, expected):
  updates = np.array(updates, np.float32)[:, np.newaxis]
  result = robust.trimmed_mean(updates, np.ones(len(updates)), trim_fraction)
  np.testing.assert_allclose(result, [expected], rtol=1e-7)


def test_trimmed_mean_trims_every_coordinate_separately():
  updates = np.array([[0.0, 9.0], [1.0, 1.0], [2.0, 0.0], [9.0, 2.0]],
                     np.float32)
  # floor(0.25 * 4) = 1: column 0 keeps {1, 2}, column 1 keeps {1, 2}.
  np.testing.assert_allclose(
      robust.trimmed_mean(updates, np.ones(4), 0.25), [1.5, 1.5])


@pytest.mark.parametrize('bad', [NAN, INF, -INF])
def test_a_non_finite_client_is_excluded_from_every_coordinate(bad):
  updates = np.array([[1.0, 1.0], [bad, 0.0], [3.0, 3.0]], np.float32)
  weights = np.ones(3)
  # Were the bad client kept in coordinate 1, its median would be 1, not 2.
  np.testing.assert_array_equal(
      robust.coordinate_median(updates, weights), [2.0, 2.0])
  np.testing.assert_array_equal(
      robust.trimmed_mean(updates, weights, 0.0), [2.0, 2.0])


@pytest.mark.parametrize('bad_weight', [0.0, -1.0, NAN])
def test_a_client_without_positive_weight_is_excluded(bad_weight):
  updates = np.array([[1.0], [100.0], [3.0]], np.float32)
  weights = np.array([1.0, bad_weight, 7.0])
  np.testing.assert_array_equal(
      robust.coordinate_median(updates, weights), [2.0])
  np.testing.assert_array_equal(
      robust.trimmed_mean(updates, weights, 0.0), [2.0])


def test_the_statistics_are_unweighted():
  updates = np.array([[0.0], [1.0], [2.0]], np.float32)
  weights = np.array([1000.0, 1.0, 1.0])
  np.testing.assert_array_equal(
      robust.coordinate_median(updates, weights), [1.0])
  np.testing.assert_array_equal(
      robust.trimmed_mean(updates, weights, 0.0), [1.0])


def test_no_admissible_client_gives_zeros():
  updates = np.array([[[NAN, 1.0]], [[2.0, 3.0]]], np.float32)
  weights = np.array([1.0, 0.0])
  for result in (robust.coordinate_median(updates, weights),
                 robust.trimmed_mean(updates, weights, 0.3),
                 robust.coordinate_median(np.zeros((0, 1, 2)), np.zeros(0))):
    np.testing.assert_array_equal(result, np.zeros((1, 2)))
  assert robust.coordinate_median(updates, weights).dtype == np.float32


def test_weights_must_match_the_clients():
  with pytest.raises(ValueError, match='weights must have shape'):
    robust.coordinate_median(np.zeros((3, 2)), np.ones(2))


@pytest.mark.parametrize('trim_fraction', [-0.1, 0.5, 0.7, NAN, True, '0.1'])
def test_trim_fraction_outside_zero_half_is_refused(trim_fraction):
  with pytest.raises(ValueError, match=r'trim_fraction must be .*\[0, 0.5\)'):
    robust.trimmed_mean(np.zeros((3, 1)), np.ones(3), trim_fraction)
  with pytest.raises(ValueError, match=r'trim_fraction must be .*\[0, 0.5\)'):
    robust.TrimmedMeanFactory(trim_fraction)


# ----------------------------------------------------------------------------
# TFF processes: types.
# ----------------------------------------------------------------------------

VALUE_TYPE = tff.types.to_type([(np.float32, [3, 2]), (np.float32, [2])])
WEIGHT_TYPE = tff.TensorType(np.float32)
SHAPES = [(3, 2), (2,)]

FACTORIES = {
    'median': robust.MedianFactory(),
    'trimmed_0': robust.TrimmedMeanFactory(0.0),
    'trimmed_0.2': robust.TrimmedMeanFactory(0.2),
    'trimmed_0.4': robust.TrimmedMeanFactory(0.4),
}


def _reference(name, updates, weights):
  """The NumPy reference of factory `name` on [num_clients, ...] updates."""
  factory = FACTORIES[name]
  if isinstance(factory, robust.MedianFactory):
    return robust.coordinate_median(updates, weights)
  return robust.trimmed_mean(updates, weights, factory.trim_fraction)


@pytest.fixture(scope='module')
def processes():
  return {name: factory.create(VALUE_TYPE, WEIGHT_TYPE)
          for name, factory in FACTORIES.items()}


@pytest.mark.parametrize('name', FACTORIES)
def test_process_types_keep_the_value_structure(processes, name):
  process = processes[name]
  assert isinstance(FACTORIES[name], tff.aggregators.WeightedAggregationFactory)
  assert process.is_weighted
  assert process.initialize.type_signature.result == tff.FederatedType(
      (), tff.SERVER)
  parameter = process.next.type_signature.parameter
  assert parameter.value == tff.FederatedType(VALUE_TYPE, tff.CLIENTS)
  assert parameter.weight == tff.FederatedType(WEIGHT_TYPE, tff.CLIENTS)
  result = process.next.type_signature.result
  assert result.state == tff.FederatedType((), tff.SERVER)
  assert result.result == tff.FederatedType(VALUE_TYPE, tff.SERVER)
  assert result.result.member.python_container is list
  assert result.measurements == tff.FederatedType(
      tff.types.to_type(collections.OrderedDict(
          num_clients=np.int32, num_excluded=np.int32)), tff.SERVER)


def test_named_structures_keep_their_names_and_dtypes():
  value_type = tff.types.to_type(collections.OrderedDict(
      kernel=(np.float32, [2, 1]), bias=(np.float64, [])))
  process = robust.MedianFactory().create(value_type, tff.TensorType(np.int32))
  result_type = process.next.type_signature.result.result.member
  assert result_type == value_type
  assert result_type.python_container is collections.OrderedDict


@pytest.mark.parametrize('value_type, weight_type, message', [
    (tff.TensorType(np.int32, [2]), WEIGHT_TYPE, 'float'),
    (tff.TensorType(np.float32, [None]), WEIGHT_TYPE, 'fully defined'),
    (VALUE_TYPE, tff.TensorType(np.float32, [2]), 'numeric scalar'),
    (VALUE_TYPE, tff.TensorType(np.bool_), 'numeric scalar'),
])
def test_unsupported_types_are_refused(value_type, weight_type, message):
  with pytest.raises(TypeError, match=message):
    robust.MedianFactory().create(value_type, weight_type)


# ----------------------------------------------------------------------------
# TFF processes: execution against the references.
# ----------------------------------------------------------------------------


def _clients(scenario):
  """Random client updates (list of [a[3, 2], b[2]]) and float32 weights."""
  rng = np.random.default_rng(7)
  num_clients = {'nan_and_zero_weight': 5, 'even': 4, 'single': 1,
                 'all_excluded': 3}[scenario]
  values = [[rng.normal(size=s).astype(np.float32) for s in SHAPES]
            for _ in range(num_clients)]
  weights = rng.integers(1, 50, size=num_clients).astype(np.float32)
  if scenario == 'nan_and_zero_weight':
    values[1][1][0] = NAN  # Only in the second tensor: excludes the client.
    weights[3] = 0.0
  elif scenario == 'all_excluded':
    values[0][0][2, 1] = INF
    weights[1:] = [0.0, -2.0]
  return values, weights


def _stack(values):
  """[num_clients, d]: each client's tensors flattened and concatenated."""
  return np.stack([np.concatenate([t.ravel() for t in v]) for v in values])


def _unstack(flat):
  sizes = [int(np.prod(s)) for s in SHAPES]
  pieces = np.split(flat, np.cumsum(sizes)[:-1])
  return [p.reshape(s) for p, s in zip(pieces, SHAPES)]


@pytest.mark.parametrize('scenario, excluded', [
    ('nan_and_zero_weight', 2), ('even', 0), ('single', 0),
    ('all_excluded', 3)])
@pytest.mark.parametrize('name', FACTORIES)
def test_process_matches_the_numpy_reference(processes, name, scenario,
                                             excluded, tff_runtime):
  del tff_runtime
  process = processes[name]
  values, weights = _clients(scenario)
  output = process.next(process.initialize(), values, list(weights))
  expected = _unstack(_reference(name, _stack(values), weights))
  assert len(output.result) == len(SHAPES)
  for got, want in zip(output.result, expected):
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
  assert output.measurements == {'num_clients': len(values),
                                 'num_excluded': excluded}
  assert output.state == ()
  if scenario == 'all_excluded':
    assert all(not t.any() for t in output.result)


@pytest.mark.parametrize('name', ['median', 'trimmed_0.2'])
def test_merged_partial_stacks_give_the_same_statistic(name, tff_runtime):
  """TFF's local executor never calls `merge`; hierarchical executors do."""
  del tff_runtime
  # pylint: disable=protected-access
  gather = robust._build_gather_computations(
      VALUE_TYPE, WEIGHT_TYPE, FACTORIES[name]._num_trimmed)
  # pylint: enable=protected-access
  values, weights = _clients('nan_and_zero_weight')
  partials = []
  for part in (slice(0, 2), slice(2, None)):
    accumulator = gather.zero()
    for value, weight in zip(values[part], weights[part]):
      accumulator = gather.accumulate(accumulator, (value, weight))
    partials.append(accumulator)
  assert [len(p['values'][0]) for p in partials] == [1, 2]
  output = gather.report(gather.merge(*partials))
  expected = _unstack(_reference(name, _stack(values), weights))
  for got, want in zip(output['result'], expected):
    np.testing.assert_allclose(got, want, rtol=1e-6)
  assert output['measurements'] == {'num_clients': 5, 'num_excluded': 2}


def test_median_process_ignores_a_huge_client(processes, tff_runtime):
  """Robustness itself: one Byzantine client cannot move the median far."""
  del tff_runtime
  values, weights = _clients('even')
  values[0] = [np.full(s, 1e30, np.float32) for s in SHAPES]
  output = processes['median'].next((), values, list(weights))
  honest = _stack(values[1:])
  flat = _stack([output.result])[0]
  assert np.all(flat >= honest.min(axis=0))
  assert np.all(flat <= honest.max(axis=0))


# ----------------------------------------------------------------------------
# End to end: FedAvg with the median as model aggregator.
# ----------------------------------------------------------------------------

LEARNING_RATE = 0.1
INPUT_DIM = 2


def _regression_datasets():
  """Three clients; the third has labels far off (a bad client)."""
  rng = np.random.default_rng(11)
  data = []
  for shift in (0.0, 1.0, 50.0):
    x = rng.normal(size=(6, INPUT_DIM)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0]]) + 0.5 + shift).astype(np.float32)
    data.append((x, y))
  return data


def _model_fn():
  return tff.learning.models.from_keras_model(
      models.build_linear(0, INPUT_DIM),
      loss=tf.keras.losses.MeanSquaredError(),
      input_spec=(tf.TensorSpec([None, INPUT_DIM], tf.float32),
                  tf.TensorSpec([None, 1], tf.float32)),
  )


@pytest.fixture(scope='module')
def fedavg_median():
  return tff.learning.algorithms.build_weighted_fed_avg(
      _model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(LEARNING_RATE),
      model_aggregator=robust.MedianFactory(),
  )


def test_fedavg_with_median_takes_the_median_client_step(fedavg_median,
                                                         tff_runtime):
  """One full-batch SGD step per client from w = 0, b = 0.

  The MSE gradient there is -2/n [X^T y; sum y], so client k ends at
  theta_k = lr * 2/n [X_k^T y_k; sum y_k]. The client update is
  0 - theta_k and the default server optimizer (SGD, lr 1) subtracts its
  median, so the new model is the coordinate-wise median of the theta_k.
  """
  del tff_runtime
  data = _regression_datasets()
  datasets = [tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
              for x, y in data]
  state = fedavg_median.initialize()
  output = fedavg_median.next(state, datasets)

  thetas = np.stack([
      LEARNING_RATE * 2.0 / len(x) * np.concatenate(
          [x.astype(np.float64).T @ y.ravel(), [y.sum()]])
      for x, y in data])
  expected = np.median(thetas, axis=0)
  kernel, bias = fedavg_median.get_model_weights(output.state).trainable
  np.testing.assert_allclose(
      np.concatenate([kernel.ravel(), bias.ravel()]), expected, rtol=1e-5)
  # The bad client's bias step is far away; the mean would follow it.
  assert abs(bias[0] - thetas[:, -1].mean()) > 1.0
  assert output.metrics['aggregator'] == {'num_clients': 3,
                                          'num_excluded': 0}
