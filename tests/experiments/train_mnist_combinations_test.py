"""Every --algorithm, --server_optimizer and --aggregator value, and the
documented compositions, run 2 rounds end to end through the MNIST binary."""

import csv
import json
import os
import subprocess
import sys

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
}


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
  root = tmp_path_factory.mktemp('combinations')
  runs = [[f'--experiment_name={name}', f'--root_output_dir={root}', *TINY,
           *args] for name, args in COMBINATIONS.items()]
  before = helpers.worker_binary_pids()
  done = subprocess.run(
      [sys.executable, '-m', 'tests.experiments.combination_driver'],
      input=json.dumps(runs), cwd=helpers.REPO_ROOT, capture_output=True,
      text=True, timeout=1200, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert done.returncode == 0, done.stderr[-3000:]
  assert not helpers.leaked_worker_pids(before)
  results = [json.loads(line) for line in done.stdout.splitlines()
             if line.startswith('{')]
  return root, {name: outcome for name, outcome in zip(COMBINATIONS, results)}


@pytest.mark.parametrize('name', list(COMBINATIONS))
def test_combination_runs_two_rounds(outcomes, name):
  root, results = outcomes
  outcome = results[name]
  assert outcome['ok'], outcome.get('error')
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
