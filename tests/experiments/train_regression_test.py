"""`python -m experiments.train_regression`: the teaching case end to end."""

import csv
import json

import numpy as np
import pytest

from tests import helpers
from tff_pipeline.data import regression


def test_teaching_defaults_reach_the_closed_form_optimum(tmp_path):
  done = helpers.run_binary_in_process(
      'experiments.train_regression', '--experiment_name=teach',
      f'--root_output_dir={tmp_path}', '--progress=false')
  assert done.returncode == 0, done.stderr
  results = tmp_path / 'results' / 'teach'
  summary = json.loads((results / 'summary.json').read_text())
  with np.load(results / 'regression_shards.npz') as shards:
    optimum = regression.least_squares(shards['x'], shards['y'])
    assert shards['x'].shape == (500, 1)
    assert sorted(np.unique(shards['client_ids'])) == list(range(10))
  np.testing.assert_allclose(summary['optimum_weights'], optimum, rtol=1e-12)
  final = np.array(summary['final_weights'])
  assert np.linalg.norm(final - optimum) < 1e-2
  # y = 2x + 1: the optimum is near the truth.
  np.testing.assert_allclose(optimum, [2.0, 1.0], atol=0.05)
  with open(results / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 100
  distances = [float(r['eval/distance_to_optimum']) for r in rows]
  assert distances[-1] < distances[0] / 100
  assert (results / 'distance_to_optimum.png').exists()


def test_bad_regression_flags(tmp_path):
  done = helpers.run_binary_in_process('experiments.train_regression',
                                       '--experiment_name=bad',
                                       f'--root_output_dir={tmp_path}',
                                       '--true_weights=1,x')
  assert done.returncode == 2
  assert 'error: --true_weights=1,x must be a comma-separated list' in (
      done.stderr)
  assert 'Traceback' not in done.stderr


def _distance_to_optimum(results):
  summary = json.loads((results / 'summary.json').read_text())
  with np.load(results / 'regression_shards.npz') as shards:
    optimum = regression.least_squares(shards['x'], shards['y'])
  return float(np.linalg.norm(np.array(summary['final_weights']) - optimum))


@pytest.mark.slow
def test_compensation_removes_the_heterogeneous_compute_bias(tmp_path):
  """Issue acceptance: with heterogeneous optima and heterogeneous tau_i, the
  compensated run ends at most 0.25 x FedAvg's distance from the pooled
  least-squares optimum (same seed, rounds and learning rates: the two
  flagfiles differ only in --aggregator).

  Slow (100 rounds each); the default suite checks the same claim with the
  flagfiles' settings in small mode (lessons_test.py).
  """
  distances = {}
  for name in ('regression_heterogeneous_fedavg',
               'regression_heterogeneous_compensated'):
    done = helpers.run_binary_in_process(
        'experiments.train_regression',
        f'--flagfile=experiments/flags/{name}.flags',
        f'--root_output_dir={tmp_path}', '--progress=false')
    assert done.returncode == 0, done.stderr
    distances[name] = _distance_to_optimum(tmp_path / 'results' / name)
  fedavg = distances['regression_heterogeneous_fedavg']
  compensated = distances['regression_heterogeneous_compensated']
  assert fedavg > 0.1
  assert compensated <= 0.25 * fedavg, distances


def test_compare_runs_plots_several_runs(tmp_path):
  for name, values in (('a', [1.0, 0.5]), ('b', [1.0, 0.2])):
    directory = tmp_path / name
    directory.mkdir()
    with open(directory / 'experiment.metrics.csv', 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['round_num', 'eval/loss'])
      writer.writerows([[r + 1, v] for r, v in enumerate(values)])
  output = tmp_path / 'plot.png'
  done = helpers.run_binary_in_process(
      'experiments.compare_runs',
      f'--results_dirs={tmp_path / "a"},{tmp_path / "b"}',
      '--metric=eval/loss', f'--output={output}')
  assert done.returncode == 0, done.stderr
  assert output.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  missing = helpers.run_binary_in_process(
      'experiments.compare_runs', f'--results_dirs={tmp_path / "a"}',
      '--metric=eval/nothing', f'--output={output}')
  assert missing.returncode == 2
  assert 'error: --metric=eval/nothing is in none of the runs' in (
      missing.stderr)


def test_compare_runs_on_simulated_time(tmp_path):
  directory = tmp_path / 'a'
  directory.mkdir()
  with open(directory / 'experiment.metrics.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['round_num', 'eval/loss', 'time/elapsed_seconds'])
    writer.writerows([[1, 1.0, 7.5], [2, 0.5, 20.0]])
  output = tmp_path / 'plot.png'
  done = helpers.run_binary_in_process(
      'experiments.compare_runs', f'--results_dirs={directory}',
      '--metric=eval/loss', f'--output={output}', '--simulated_time')
  assert done.returncode == 0, done.stderr
  assert output.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  (tmp_path / 'old').mkdir()
  with open(tmp_path / 'old' / 'experiment.metrics.csv', 'w') as f:
    f.write('round_num,eval/loss\n1,1.0\n')
  old = helpers.run_binary_in_process(
      'experiments.compare_runs', f'--results_dirs={tmp_path / "old"}',
      '--metric=eval/loss', f'--output={output}', '--simulated_time')
  assert old.returncode == 2
  assert 'time/elapsed_seconds' in old.stderr
