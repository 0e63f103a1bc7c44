"""Every --algorithm, --server_optimizer and --aggregator value, and the
documented compositions, run 2 rounds end to end through the MNIST binary
(the default suite runs one combination per flag group, `make test-slow` all)."""

import csv
import json

import pytest

from tests import helpers

TINY = ['--model=2nn', '--num_clients=20', '--clients_per_round=4',
        '--client_batch_size=50', '--total_rounds=2', '--progress=false',
        '--client_learning_rate=0.05']

COMBINATIONS = {
    # Algorithms.
    'fedavg': ['--algorithm=fedavg'],
    'fedprox': ['--algorithm=fedprox', '--proximal_strength=0.1'],
    'fedsgd': ['--algorithm=fedsgd', '--server_learning_rate=0.5'],
    # Server and client optimizers.
    'server_sgdm': ['--server_optimizer=sgd', '--server_momentum=0.9'],
    'server_adam': ['--server_optimizer=adam', '--server_learning_rate=0.01'],
    'server_yogi': ['--server_optimizer=yogi', '--server_learning_rate=0.01'],
    'server_adagrad': ['--server_optimizer=adagrad',
                       '--server_learning_rate=0.1'],
    'client_adam': ['--client_optimizer=adam', '--client_learning_rate=0.001'],
    # Aggregators.
    'mean': ['--aggregator=mean'],
    'compensated': ['--aggregator=compensated', '--compensation_q=1',
                    '--straggler_fraction=0.5', '--straggler_budget=steps',
                    '--client_holdout_fraction=0.2'],
    'median': ['--aggregator=median'],
    'trimmed_mean': ['--aggregator=trimmed_mean', '--trim_fraction=0.25'],
    # Documented compositions.
    'dp_fixed': ['--dp_noise_multiplier=0.5', '--dp_clip_norm=1.0'],
    'dp_adaptive': ['--dp_noise_multiplier=0.5', '--dp_adaptive_clipping'],
    # DP noise is not seedable (TFF draws it unseeded). With 4 clients the
    # noise on the mean is 0.5 * clip / 4 per coordinate; at clip 1.0, times
    # compensation's rescaling, the model sometimes blew up in round 2.
    'compensated_dp': ['--aggregator=compensated', '--dp_noise_multiplier=0.5',
                       '--dp_clip_norm=0.1', '--capacity_profile=uniform'],
    'secure': ['--secure_aggregation'],
    'compensated_secure': ['--aggregator=compensated', '--secure_aggregation'],
    'compression': ['--compression', '--compression_bits=8'],
    'clip_zeroing': ['--clip_norm=2.0', '--zeroing'],
    'median_zeroing_faults': ['--aggregator=median', '--zeroing',
                              '--faulty_client_fraction=0.25',
                              '--faulty_mode=nan'],
    'fedprox_compensated': ['--algorithm=fedprox', '--proximal_strength=0.1',
                            '--aggregator=compensated'],
    'clip_scale_faults': ['--clip_norm=1.0', '--faulty_client_fraction=0.25',
                          '--faulty_mode=scale'],
    # HeteroFL (docs/heterofl.md) with what composes with its masked mean.
    'heterofl_fedprox_adam': [
        '--algorithm=fedprox', '--proximal_strength=0.1',
        '--client_optimizer=adam', '--client_learning_rate=0.001',
        '--model_width_policy=mix', '--model_widths=1,0.5,0.25',
        '--model_width_mix=10,5,5'],
    'heterofl_faults_server_adam': [
        '--model_width_policy=mix', '--model_widths=1,0.25',
        '--model_width_mix=10,10', '--faulty_client_fraction=0.25',
        '--faulty_mode=nan', '--server_optimizer=adam',
        '--server_learning_rate=0.01'],
    'heterofl_drop_power_of_choice': [
        '--model_width_policy=capacity', '--round_policy=deadline_drop',
        '--deadline_quantile=0.5', '--capacity_profile=minority',
        '--client_selection=power_of_choice', '--nomodel_width_scaler'],
}


# Each flag group above is exercised by the default suite through one of
# these; `make test-slow` runs the rest (defaults, further optimizers,
# aggregators and compositions that aggregators_test.py and
# algorithms_test.py already check in-process against references).
DEFAULT_SUITE = ('fedprox', 'fedsgd', 'server_adam', 'client_adam',
                 'compensated', 'median_zeroing_faults', 'dp_adaptive',
                 'compensated_secure', 'compression')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return tmp_path_factory.mktemp('combinations')


@pytest.mark.parametrize('name', [
    name if name in DEFAULT_SUITE else pytest.param(name,
                                                    marks=pytest.mark.slow)
    for name in COMBINATIONS])
def test_combination_runs_two_rounds(root, name):
  """Runs in one process with the others (one TensorFlow import)."""
  before = helpers.worker_binary_pids()
  done = helpers.run_binary_in_process(
      'experiments.train_mnist', f'--experiment_name={name}',
      f'--root_output_dir={root}', *TINY, *COMBINATIONS[name])
  assert not helpers.leaked_worker_pids(before)
  assert done.returncode == 0, done.stderr[-3000:]
  results_dir = root / 'results' / name
  with open(results_dir / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['round_num'] for r in rows] == ['1', '2']
  summary = json.loads((results_dir / 'summary.json').read_text())
  assert summary['status'] == 'completed'
  assert 0.0 <= summary['final_eval_accuracy'] <= 1.0
  assert float(rows[-1]['communication/bytes_uploaded']) > 0
  if '--dp_noise_multiplier=0.5' in COMBINATIONS[name]:
    assert summary['dp_epsilon'] == pytest.approx(
        float(rows[-1]['privacy/epsilon']))
  if name == 'compression':
    assert summary['upload_bits_per_value'] < 9
