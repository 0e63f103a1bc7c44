"""`python -m experiments.train_regression`: the teaching case end to end."""

import csv
import json

import numpy as np

from tests import helpers
from tff_pipeline.data import regression


def test_teaching_defaults_reach_the_closed_form_optimum(tmp_path):
  done = helpers.run_binary('experiments.train_regression',
                            '--experiment_name=teach',
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
  done = helpers.run_binary('experiments.train_regression',
                            '--experiment_name=bad',
                            f'--root_output_dir={tmp_path}',
                            '--true_weights=1,x')
  assert done.returncode == 2
  assert 'error: --true_weights=1,x must be a comma-separated list' in (
      done.stderr)
  assert 'Traceback' not in done.stderr
