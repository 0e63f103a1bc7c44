"""The compensation-aware aggregator: NumPy reference, types, values, and
exact agreement with TFF's weighted FedAvg when there is nothing to fix."""

import collections
import dataclasses

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import heterogeneity
from tff_pipeline import tasks
from tff_pipeline.aggregators import compensation
from tff_pipeline.algorithms import compensation_client_work as client_work
from tff_pipeline.data import regression
from tff_pipeline.training import loop

DELTA_TYPE = tff.StructWithPythonType([
    ('a', tff.TensorType(np.float32, [2, 3])),
    ('b', tff.TensorType(np.float32, [3])),
], collections.OrderedDict)
VALUE_TYPE = tff.StructWithPythonType([
    (client_work.MODEL_DELTA, DELTA_TYPE),
    (client_work.LOCAL_STEPS, tff.TensorType(np.float32)),
    (client_work.PRE_TRAINING_LOSS, tff.TensorType(np.float32)),
], collections.OrderedDict)
WEIGHT_TYPE = tff.TensorType(np.float32)


# ---- The NumPy reference against hand-computed numbers. ----

def test_reference_equal_steps_no_reweighting_is_weighted_mean():
  deltas = np.array([[1.0, 2.0], [3.0, 6.0]])
  update, m = compensation.compensated_average(
      deltas, [4, 4], [1.0, 2.0], [1, 3])
  np.testing.assert_allclose(update, [2.5, 5.0])  # (1*[1,2] + 3*[3,6]) / 4
  assert m['tau_eff'] == 4 and m['num_reweighted'] == 0


def test_reference_unequal_steps_by_hand():
  # Client 0 ran 1 step, client 1 ran 4; p = (0.5, 0.5).
  # FedNova: tau_eff = 2.5; update = 2.5 * (0.5 * 2/1 + 0.5 * 8/4) = 5.
  # Plain FedAvg would give 0.5 * 2 + 0.5 * 8 = 5 too; use other deltas:
  update, m = compensation.compensated_average(
      np.array([[2.0], [12.0]]), [1, 4], [0, 0], [1, 1])
  assert m['tau_eff'] == 2.5
  np.testing.assert_allclose(update, [2.5 * (0.5 * 2 + 0.5 * 3)])  # 6.25
  plain, _ = compensation.compensated_average(
      np.array([[2.0], [12.0]]), [1, 4], [0, 0], [1, 1],
      normalize_local_steps=False)
  np.testing.assert_allclose(plain, [7.0])


def test_reference_loss_reweighting_by_hand():
  # n = (1, 1), L = (1, 3): Lbar = 2, factors (0.5, 1.5)^2 = (0.25, 2.25),
  # p = (0.1, 0.9).
  update, m = compensation.compensated_average(
      np.array([[10.0], [0.0]]), [1, 1], [1.0, 3.0], [1, 1], loss_power=2,
      max_loss_factor=10)
  np.testing.assert_allclose(update, [1.0])
  assert m['min_effective_weight'] == pytest.approx(0.1)
  assert m['max_effective_weight'] == pytest.approx(0.9)
  assert m['num_reweighted'] == 2 and m['mean_pre_training_loss'] == 2


def test_reference_clips_the_loss_factor():
  # L = (1, 19): Lbar = 10, factors (0.1, 1.9)^1 clipped to [1/2, 2] give
  # (0.5, 1.9): p = (0.5/2.4, 1.9/2.4).
  update, m = compensation.compensated_average(
      np.array([[12.0], [0.0]]), [1, 1], [1.0, 19.0], [1, 1], loss_power=1,
      max_loss_factor=2)
  np.testing.assert_allclose(update, [12 * 0.5 / 2.4])
  assert m['min_effective_weight'] == pytest.approx(0.5 / 2.4)


def test_reference_drops_zero_weight_and_nan_clients():
  deltas = np.array([[1.0], [np.nan], [5.0], [7.0]])
  update, m = compensation.compensated_average(
      deltas, [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 1])
  np.testing.assert_allclose(update, [1.0])  # only client 0 is kept
  assert m['num_dropped'] == 3


def test_reference_everyone_dropped_gives_zero():
  update, m = compensation.compensated_average(
      np.array([[np.inf], [1.0]]), [1, 1], [1, 1], [1, 0])
  np.testing.assert_array_equal(update, [0.0])
  assert m['zero_total_weight'] == 1


# ---- The TFF process: types, then values against the reference. ----

@pytest.fixture(scope='module')
def processes(tff_runtime):
  del tff_runtime
  return {
      (normalize, q, inner): compensation.CompensatedFactory(
          normalize_local_steps=normalize, loss_power=q,
          inner=(tff.aggregators.UnweightedMeanFactory() if inner == 'u'
                 else None)).create(VALUE_TYPE, WEIGHT_TYPE)
      for normalize, q, inner in [(True, 0.0, 'w'), (True, 2.0, 'w'),
                                  (False, 0.0, 'w'), (True, 2.0, 'u')]
  }


def test_type_signature(processes):
  process = processes[(True, 2.0, 'w')]
  signature = process.next.type_signature
  assert signature.parameter[1] == tff.FederatedType(VALUE_TYPE, tff.CLIENTS)
  assert signature.result.result == tff.FederatedType(DELTA_TYPE, tff.SERVER)
  measurements = signature.result.measurements.member
  assert [name for name, _ in tff.structure.iter_elements(
      measurements.compensation)] == [
      'tau_eff', 'min_effective_weight', 'max_effective_weight',
      'num_reweighted', 'num_dropped', 'mean_pre_training_loss',
      'zero_total_weight']
  assert [name for name, _ in tff.structure.iter_elements(measurements)] == [
      'compensation', 'inner']


def _client_values(deltas_a, deltas_b, taus, losses):
  return [
      collections.OrderedDict([
          (client_work.MODEL_DELTA, collections.OrderedDict(a=a, b=b)),
          (client_work.LOCAL_STEPS, np.float32(t)),
          (client_work.PRE_TRAINING_LOSS, np.float32(l)),
      ])
      for a, b, t, l in zip(deltas_a, deltas_b, taus, losses)
  ]


CASES = {
    'unequal_steps': dict(taus=[1, 3, 5, 2], losses=[1, 1, 1, 1],
                          weights=[10, 20, 30, 40], nan=None),
    'unequal_losses': dict(taus=[2, 2, 2, 2], losses=[0.5, 1.0, 2.0, 4.0],
                           weights=[10, 20, 30, 40], nan=None),
    'zero_weight': dict(taus=[1, 3, 5, 2], losses=[0.5, 1.0, 2.0, 4.0],
                        weights=[10, 0, 30, 40], nan=None),
    'nan_update': dict(taus=[1, 3, 5, 2], losses=[0.5, 1.0, 2.0, 4.0],
                       weights=[10, 20, 30, 40], nan=2),
}


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('key', [(True, 0.0, 'w'), (True, 2.0, 'w'),
                                 (False, 0.0, 'w'), (True, 2.0, 'u')])
def test_values_match_the_numpy_reference(processes, case, key):
  normalize, q, _ = key
  spec = CASES[case]
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 2, 3)).astype(np.float32)
  b = rng.normal(size=(4, 3)).astype(np.float32)
  if spec['nan'] is not None:
    a[spec['nan'], 0, 0] = np.nan
  process = processes[key]
  output = process.next(
      process.initialize(),
      _client_values(a, b, spec['taus'], spec['losses']),
      [np.float32(w) for w in spec['weights']])
  flat = np.concatenate([a.reshape(4, -1), b], axis=1)
  expected, measurements = compensation.compensated_average(
      flat, spec['taus'], spec['losses'], spec['weights'], loss_power=q,
      normalize_local_steps=normalize)
  got = np.concatenate([output.result['a'].ravel(), output.result['b']])
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
  for name, value in measurements.items():
    assert output.measurements['compensation'][name] == pytest.approx(
        value, rel=1e-5, abs=1e-6), name


# ---- Whole learning processes. ----

SPEC = regression.RegressionSpec(num_clients=6, examples_per_client=30,
                                 weight_heterogeneity=1.0, size_exponent=1.0,
                                 seed=2)


def _config(tmp_path, name, **changes):
  base = config_lib.TrainingConfig(
      experiment_name=name, root_output_dir=str(tmp_path), total_rounds=4,
      clients_per_round=4, client_batch_size=5, client_epochs_per_round=2,
      client_optimizer=config_lib.OptimizerConfig(learning_rate=0.05),
      seed=5)
  return dataclasses.replace(base, **changes)


def test_equal_steps_and_no_reweighting_is_exactly_tff_fedavg(tmp_path,
                                                              tff_runtime):
  # Equal client sizes, so that every client runs the same number of steps.
  task = tasks.build_regression_task(regression.make_regression_shards(
      dataclasses.replace(SPEC, size_exponent=0.0)))
  fedavg = loop.run_federated(task, _config(tmp_path, 'fedavg'),
                              runtime=tff_runtime, progress=False)
  compensated = loop.run_federated(
      task, _config(tmp_path, 'comp', aggregator='compensated'),
      runtime=tff_runtime, progress=False)
  for x, y in zip(fedavg.final_weights, compensated.final_weights):
    np.testing.assert_allclose(x, y, atol=1e-6)
  row = compensated.history[-1]
  assert row['aggregator/compensation/num_reweighted'] == 0
  assert row['client_work/train/loss'] == pytest.approx(
      fedavg.history[-1]['client_work/train/loss'], rel=1e-5)


def test_equal_steps_is_exactly_tff_fedavg_on_mnist(tmp_path, tff_runtime,
                                                    mnist_arrays):
  # A nonlinear model: the 2NN on a 2000-image subset, 10 clients.
  subset = dataclasses.replace(
      mnist_arrays, train_x=mnist_arrays.train_x[:2000],
      train_y=mnist_arrays.train_y[:2000])
  task = tasks.build_mnist_task(
      tasks.MnistTaskSpec(model='2nn', num_clients=10, seed=1), subset)
  config = _config(tmp_path, 'm', total_rounds=2, clients_per_round=3,
                   client_batch_size=20, client_epochs_per_round=1)
  fedavg = loop.run_federated(task, config, runtime=tff_runtime,
                              progress=False)
  compensated = loop.run_federated(
      task, dataclasses.replace(config, experiment_name='mc',
                                aggregator='compensated'),
      runtime=tff_runtime, progress=False)
  for x, y in zip(fedavg.final_weights, compensated.final_weights):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_stragglers_measurements_reach_the_metrics(tmp_path, tff_runtime):
  task = tasks.build_regression_task(regression.make_regression_shards(SPEC))
  config = _config(
      tmp_path, 'strag', aggregator='compensated',
      aggregation=config_lib.AggregationConfig(compensation_q=1.0),
      heterogeneity=heterogeneity.ComputeHeterogeneity(
          straggler_fraction=0.5, straggler_budget='steps'))
  result = loop.run_federated(task, config, runtime=tff_runtime,
                              progress=False)
  rows = result.history
  assert any(r['compute/num_stragglers'] > 0 for r in rows)
  for r in rows:
    # tau_eff is a weighted mean of the budgets.
    assert (r['compute/min_local_steps'] - 1e-5
            <= r['aggregator/compensation/tau_eff']
            <= r['compute/max_local_steps'] + 1e-5)
    assert r['aggregator/compensation/num_reweighted'] > 0
    assert 0 < r['aggregator/compensation/min_effective_weight'] <= (
        r['aggregator/compensation/max_effective_weight'] < 1)
