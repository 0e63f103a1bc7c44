"""The aggregator registry: every base and wrapper composes and runs."""

import dataclasses

import dp_accounting
import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline import aggregators
from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import tasks
from tff_pipeline.aggregators import communication
from tff_pipeline.aggregators import compensation
from tff_pipeline.data import regression
from tff_pipeline.training import loop

BASE = config_lib.TrainingConfig(
    experiment_name='x', root_output_dir='/tmp/unused', clients_per_round=4,
    total_rounds=3, client_batch_size=5,
    client_optimizer=config_lib.OptimizerConfig(learning_rate=0.05), seed=3)


def _with(aggregator='mean', **aggregation):
  return dataclasses.replace(
      BASE, aggregator=aggregator,
      aggregation=config_lib.AggregationConfig(**aggregation))


@pytest.mark.parametrize('aggregator', aggregators.AGGREGATORS.names())
@pytest.mark.parametrize('wrappers', [{}, {'clip_norm': 1.0},
                                      {'zeroing': True},
                                      {'clip_norm': 1.0, 'zeroing': True}])
def test_every_base_with_robust_wrappers_builds(aggregator, wrappers):
  factory = aggregators.build_aggregator(_with(aggregator, **wrappers))
  assert isinstance(factory, tff.aggregators.WeightedAggregationFactory)


@pytest.mark.parametrize('aggregator', ['mean', 'compensated'])
@pytest.mark.parametrize('core', [
    {'dp_noise_multiplier': 0.5}, {'dp_noise_multiplier': 0.5,
                                   'dp_adaptive_clipping': True},
    {'secure_aggregation': True}, {'compression': True}])
def test_cores_build_under_mean_and_compensated(aggregator, core):
  factory = aggregators.build_aggregator(_with(aggregator, **core))
  assert isinstance(factory, tff.aggregators.WeightedAggregationFactory)
  if aggregator == 'compensated':
    assert isinstance(factory, compensation.CompensatedFactory)


@pytest.mark.parametrize('aggregator', ['median', 'trimmed_mean'])
@pytest.mark.parametrize('core, flag', [
    ({'dp_noise_multiplier': 0.5}, '--dp_noise_multiplier'),
    ({'secure_aggregation': True}, '--secure_aggregation'),
    ({'compression': True}, '--compression')])
def test_robust_statistics_refuse_sum_based_cores(aggregator, core, flag):
  with pytest.raises(errors.UsageError, match=f'cannot be combined with {flag}'):
    aggregators.build_aggregator(_with(aggregator, **core))


def test_two_sum_replacements_are_refused():
  with pytest.raises(errors.UsageError,
                     match='--dp_noise_multiplier and --secure_aggregation'):
    _with(dp_noise_multiplier=1.0, secure_aggregation=True).validate()


@pytest.fixture(scope='module')
def task():
  return tasks.build_regression_task(regression.make_regression_shards(
      regression.RegressionSpec(num_clients=8, examples_per_client=20,
                                weight_heterogeneity=0.3, seed=1)))


@pytest.mark.parametrize('aggregator, aggregation', [
    ('mean', dict(dp_noise_multiplier=0.3, dp_clip_norm=0.5)),
    ('compensated', dict(dp_noise_multiplier=0.3, dp_adaptive_clipping=True,
                         compensation_q=1.0)),
    ('mean', dict(secure_aggregation=True)),
    ('compensated', dict(compression=True, clip_norm=1.0, zeroing=True)),
    ('trimmed_mean', dict(zeroing=True, trim_fraction=0.25)),
])
def test_compositions_train(task, tmp_path, tff_runtime, aggregator,
                            aggregation):
  config = dataclasses.replace(_with(aggregator, **aggregation),
                               root_output_dir=str(tmp_path))
  result = loop.run_federated(task, config, runtime=tff_runtime,
                              progress=False)
  first, last = result.history[0], result.history[-1]
  assert np.isfinite(last['eval/loss'])
  if aggregation.get('dp_noise_multiplier', 0) == 0:
    # Without noise, three rounds from zero weights must reduce the loss.
    assert last['eval/loss'] < first['eval/loss'] or last[
        'eval/loss'] < task.evaluate([np.zeros((1, 1)), np.zeros(1)])['loss']


def test_dp_epsilon_is_recorded_and_matches_dp_accounting(task, tmp_path,
                                                          tff_runtime):
  epsilons = {}
  for noise in (0.5, 1.0):
    config = dataclasses.replace(
        _with(dp_noise_multiplier=noise), experiment_name=f'dp{noise}',
        root_output_dir=str(tmp_path))
    result = loop.run_federated(task, config, runtime=tff_runtime,
                                progress=False)
    # Computed independently: 3 rounds of the Poisson-subsampled Gaussian
    # mechanism at q = 4/8, delta = 1/8.
    for row in result.history:
      accountant = dp_accounting.rdp.RdpAccountant()
      accountant.compose(dp_accounting.PoissonSampledDpEvent(
          0.5, dp_accounting.GaussianDpEvent(noise)),
                         count=int(row['round_num']))
      assert row['privacy/epsilon'] == pytest.approx(
          accountant.get_epsilon(1 / 8), rel=1e-9)
    summary = result.summary
    assert summary['dp_delta'] == 1 / 8
    assert summary['dp_epsilon'] == result.history[-1]['privacy/epsilon']
    epsilons[noise] = summary['dp_epsilon']
  assert epsilons[1.0] < epsilons[0.5]


def test_communication_payload_by_hand():
  sizes = [784 * 200, 200, 200 * 10, 10]
  plain = communication.payload(sizes, [], _with(), 20000)
  assert plain.broadcast_bytes == 4 * sum(sizes)
  assert plain.upload_bytes == 4 * sum(sizes) + 4
  compressed = communication.payload(
      sizes, [], _with(compression=True, compression_bits=8), 20000)
  # Only the 156800-value kernel is quantized: 1 byte each + its range.
  assert compressed.upload_bytes == 156800 + 8 + 4 * (200 + 2000 + 10) + 4
  assert 8 < compressed.upload_bits_per_value < 9
  compensated = communication.payload(sizes, [], _with('compensated'), 20000)
  assert compensated.upload_bytes == plain.upload_bytes + 8


def test_secure_aggregation_computes_the_weighted_mean(tff_runtime):
  """The simulated secure sum (bounds, quantization, then a plain sum) gives
  the weighted mean to quantization precision."""
  del tff_runtime
  factory = aggregators.build_aggregator(_with(secure_aggregation=True))
  process = factory.create(tff.TensorType(np.float32, [3]),
                           tff.TensorType(np.float32))
  values = [np.array([1.0, -2.0, 0.5], np.float32),
            np.array([3.0, 0.0, -0.5], np.float32)]
  weights = [np.float32(1.0), np.float32(3.0)]
  output = process.next(process.initialize(), values, weights)
  np.testing.assert_allclose(output.result,
                             (values[0] + 3 * values[1]) / 4, atol=1e-4)
