"""`experiments.train_mnist` in simulated time: the deadline policies' CSV
columns and summary, and bad simulated-time input."""

import csv
import json

import pytest

from tests import helpers

MODULE = 'experiments.train_mnist'
TINY = ['--model=2nn', '--num_clients=20', '--clients_per_round=2',
        '--client_batch_size=50', '--total_rounds=2', '--progress=false',
        '--capacity_profile=minority', '--slow_client_fraction=0.5',
        '--min_capacity=0.2']


def _run(tmp_path, name, *args):
  done = helpers.run_binary_in_process(
      MODULE, f'--experiment_name={name}', f'--root_output_dir={tmp_path}',
      *TINY, *args)
  assert done.returncode == 0, done.stderr
  results = tmp_path / 'results' / name
  with open(results / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  return rows, json.loads((results / 'summary.json').read_text()), results


@pytest.mark.parametrize('policy, sampled', [('deadline_drop', 3),
                                             ('deadline_partial', 2)])
def test_deadline_policies_write_the_clock(tmp_path, policy, sampled):
  rows, summary, results = _run(
      tmp_path, policy, f'--round_policy={policy}',
      '--deadline_quantile=0.5', '--target_accuracy=0.5')
  assert [r['round_num'] for r in rows] == ['1', '2']
  elapsed = 0.0
  for row in rows:
    assert float(row['time/clients_sampled']) == sampled
    dropped = float(row['time/clients_dropped'])
    trained = sampled - dropped
    assert 1 <= trained <= 2
    assert float(row['time/round_seconds']) <= float(
        row['time/deadline_seconds']) or row['time/deadline_missed'] == '1.0'
    elapsed += float(row['time/round_seconds'])
    assert float(row['time/elapsed_seconds']) == pytest.approx(elapsed)
    share = float(row['time/minority_share'])
    assert share * trained == pytest.approx(round(share * trained))
    assert float(row['compute/mean_local_steps']) >= 1
  assert summary['round_policy'] == policy
  assert summary['simulated_seconds'] == pytest.approx(elapsed)
  # Two rounds of the 2NN on 1000-image clients pass 50% accuracy.
  first = next(r for r in rows if float(r['eval/accuracy']) >= 0.5)
  assert summary['rounds_to_target'] == int(first['round_num'])
  assert summary['simulated_seconds_to_target'] == pytest.approx(
      float(first['time/elapsed_seconds']))
  assert (results / 'accuracy_vs_simulated_time.png').exists()


def _device_file(tmp_path, text):
  path = tmp_path / 'devices.csv'
  path.write_text(text)
  return ['--device_profile=file', f'--device_file={path}']


_HEADER = 'client,gflops,up_mbps,down_mbps\n'


@pytest.mark.parametrize('args, message', [
    (['--round_policy=deadline_drop', '--deadline_seconds=0'],
     '--deadline_seconds=0.0 must be > 0 with --round_policy=deadline_drop'),
    (['--round_policy=deadline_partial', '--deadline_seconds=-3'],
     '--deadline_seconds=-3.0 must be > 0'),
    (['--round_policy=deadline_partial', '--deadline_quantile=1.5'],
     '--deadline_quantile=1.5 must be in (0, 1]'),
    (['--target_accuracy=1.2'], '--target_accuracy=1.2 must be in (0, 1]'),
    (['--target_accuracy=-0.5'], '--target_accuracy=-0.5 must be in (0, 1]'),
    (['--round_policy=soonest'], '--round_policy=soonest: value should be'),
    (lambda p: _device_file(p, 'client,gflops\n0,1\n'),
     'missing column(s) up_mbps, down_mbps'),
    (lambda p: _device_file(p, _HEADER + ''.join(
        f'{k},1,1,1\n' for k in range(19)) + '19,0,1,1\n'),
     'row 20: gflops=\'0\' must be a positive finite number'),
    (lambda p: _device_file(p, _HEADER + ''.join(
        f'{k},1,1,nan\n' for k in range(20))),
     'row 1: down_mbps=\'nan\' must be a positive finite number'),
    (lambda p: _device_file(p, _HEADER + '0,1,1,1\n'),
     '1 devices for --num_clients=20'),
])
def test_bad_simulated_time_input_gets_one_line(tmp_path, args, message):
  if callable(args):
    args = args(tmp_path)
  done = helpers.run_binary_in_process(
      MODULE, '--experiment_name=bad', f'--root_output_dir={tmp_path}', *TINY,
      *args)
  helpers.assert_one_line_error(done, message)
