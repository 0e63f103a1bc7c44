"""The regression lessons: their closed-form checks hold (small mode), their
NumPy references are right, and the binary reports and fails as it should."""

import math
import os
import re

import numpy as np
import pytest

from tests import helpers
from tff_pipeline import errors
from tff_pipeline import lessons
from tff_pipeline import privacy
from tff_pipeline.data import regression

SHARDS = regression.make_regression_shards(regression.RegressionSpec(
    num_clients=4, examples_per_client=12, num_features=2, feature_shift=0.7,
    weight_heterogeneity=0.8, size_exponent=1.0, seed=3))
CLIENTS = lessons.client_arrays(SHARDS)
SIZES = [len(x) for x, _ in CLIENTS]


# ---- The NumPy references, against first principles. ----

def test_local_gd_map_is_repeated_gradient_steps():
  x, y = CLIENTS[0]
  theta0 = np.array([0.3, -0.2, 0.5])
  theta = theta0.copy()
  for _ in range(4):
    theta = theta - 0.1 * lessons.mse_gradient(x, y, theta)
  b_mat, c_vec = lessons.local_gd_map(x, y, 0.1, 4)
  np.testing.assert_allclose(b_mat @ theta0 + c_vec, theta, atol=1e-12)


def test_one_step_fedavg_fixed_point_is_the_pooled_optimum():
  """tau = 1 and weights n_i: sum_i n_i (A_i w - b_i) = 0 is the pooled
  normal equation, whatever the clients look like."""
  maps = [lessons.local_gd_map(x, y, 0.1, 1) for x, y in CLIENTS]
  np.testing.assert_allclose(lessons.fedavg_fixed_point(maps, SIZES),
                             SHARDS.pooled_optimum(), atol=1e-10)
  iterates = lessons.fedavg_iterates(maps, SIZES, 400, np.zeros(3))
  np.testing.assert_allclose(iterates[-1], SHARDS.pooled_optimum(),
                             atol=1e-8)


def test_fednova_with_equal_steps_is_fedavg():
  maps = [lessons.local_gd_map(x, y, 0.05, 3) for x, y in CLIENTS]
  np.testing.assert_allclose(
      lessons.fednova_fixed_point(maps, SIZES, [3] * 4),
      lessons.fedavg_fixed_point(maps, SIZES), atol=1e-10)
  np.testing.assert_allclose(
      lessons.fednova_iterates(maps, SIZES, [3] * 4, 7, np.zeros(3))[-1],
      lessons.fedavg_iterates(maps, SIZES, 7, np.zeros(3))[-1], atol=1e-12)


def test_weighted_client_optimum_with_sizes_is_the_pooled_optimum():
  np.testing.assert_allclose(
      lessons.weighted_client_optimum(CLIENTS, SIZES),
      SHARDS.pooled_optimum(), atol=1e-10)
  # All weight on one client: that client's own least-squares fit.
  np.testing.assert_allclose(
      lessons.weighted_client_optimum(CLIENTS, [0, 0, 1, 0]),
      regression.least_squares(*CLIENTS[2]), atol=1e-10)


def _flagfile_settings(name):
  path = os.path.join(helpers.REPO_ROOT, 'experiments', 'flags', name)
  settings = {}
  with open(path) as f:
    for line in f:
      match = re.fullmatch(r'--(\w+)=(\S+)\s*', line)
      if match:
        settings[match.group(1)] = match.group(2)
  return settings


def test_heterogeneous_compute_lesson_uses_the_flagfiles_settings():
  fedavg = _flagfile_settings('regression_heterogeneous_fedavg.flags')
  compensated = _flagfile_settings(
      'regression_heterogeneous_compensated.flags')
  assert fedavg.pop('aggregator') == 'mean'
  assert compensated.pop('aggregator') == 'compensated'
  assert fedavg == compensated
  for key, value in lessons.HETEROGENEOUS_COMPUTE_SETTINGS.items():
    assert str(value) == fedavg[key] or float(value) == float(fedavg[key]), key
  assert int(fedavg['seed']) == 0  # The lessons' default seed.


def test_unknown_lesson_is_a_usage_error(tmp_path):
  with pytest.raises(errors.UsageError, match='valid names are'):
    lessons.run_lessons(['nope'], str(tmp_path))


# ---- The lessons themselves, in small mode. ----

@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('lessons'))


@pytest.fixture(scope='module')
def fedsgd(root, tff_runtime):
  return lessons.fedsgd_equals_gd(root, small=True, runtime=tff_runtime)


@pytest.fixture(scope='module')
def drift(root, tff_runtime):
  return lessons.local_steps_drift(root, small=True, runtime=tff_runtime)


@pytest.fixture(scope='module')
def compute(root, tff_runtime):
  return lessons.compute_heterogeneity(root, small=True, runtime=tff_runtime)


@pytest.fixture(scope='module')
def dp(root, tff_runtime):
  return lessons.dp_noise(root, small=True, runtime=tff_runtime)


def test_fedsgd_equals_gradient_descent(fedsgd):
  assert fedsgd.check(), fedsgd.checks()
  assert fedsgd.max_weight_difference <= 1e-5
  np.testing.assert_allclose(fedsgd.federated_loss, fedsgd.gd_loss, rtol=1e-5)
  np.testing.assert_allclose(fedsgd.federated_distance, fedsgd.gd_distance,
                             atol=1e-5)
  assert len(fedsgd.rounds) == 8
  # Unequal sizes: weighting clients uniformly would go elsewhere.
  assert len(set(fedsgd.client_sizes)) > 1
  assert fedsgd.uniform_distance > 10 * fedsgd.federated_distance[-1]


def test_local_steps_drift_grows_with_local_steps(drift):
  assert drift.check(), drift.checks()
  assert drift.local_steps == (1, 5, 20)
  assert drift.final_distance[0] < 1e-3
  assert np.all(np.diff(drift.final_distance) > 0)
  assert np.all(np.diff(drift.fixed_point_distance) > 0)
  assert drift.fixed_point_distance[0] < 1e-12  # tau = 1: exactly w*.
  np.testing.assert_allclose(drift.final_distance,
                             drift.reference_final_distance, atol=1e-4)
  assert drift.max_reference_difference <= 1e-4


def test_compensation_removes_the_compute_bias(compute):
  assert compute.check(), compute.checks()
  assert compute.compensated_distance[-1] < compute.fedavg_distance[-1]
  assert compute.ratio <= 0.25
  np.testing.assert_allclose(compute.fedavg_distance,
                             compute.fedavg_reference_distance, atol=1e-4)
  np.testing.assert_allclose(compute.compensated_distance,
                             compute.compensated_reference_distance,
                             atol=1e-4)
  assert len(set(compute.local_steps)) > 1
  assert (compute.compensated_fixed_point_distance
          < compute.fedavg_fixed_point_distance)


def test_dp_noise_lowers_epsilon_and_accuracy(dp):
  assert dp.check(), dp.checks()
  sigmas = dp.noise_multipliers
  assert sigmas == (0.0, 1.0, 3.0)
  assert math.isinf(dp.epsilon[0])
  assert dp.epsilon[1] > dp.epsilon[2] > 0
  q = dp.clients_per_round / dp.num_clients
  for sigma, epsilon in zip(sigmas[1:], dp.epsilon[1:]):
    assert epsilon == pytest.approx(
        privacy.dp_epsilon(sigma, q, len(dp.rounds), dp.delta), rel=1e-9)
  assert min(dp.tail_distance[1:]) >= dp.tail_distance[0]
  assert all(m >= dp.optimum_mse for m in dp.final_mse)


def test_write_report(fedsgd, drift, compute, dp, tmp_path):
  results = [fedsgd, drift, compute, dp]
  paths = lessons.write_report(results, str(tmp_path / 'report'))
  names = [os.path.basename(p) for p in paths]
  assert names == [f'{r.name}.png' for r in results] + ['lessons.md']
  for path in paths[:-1]:
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(paths[-1]) as f:
    text = f.read()
  table = [line for line in text.splitlines() if line.startswith('| ')]
  assert len(table) == 2 + len(results)  # Header, separator, one per lesson.
  assert all(line.endswith('| yes |') for line in table[2:])
  assert not [p for p in os.listdir(tmp_path / 'report')
              if p.startswith('.')]  # No temporary files left.


# ---- The binary. ----

def test_binary_runs_a_lesson_and_writes_the_report(tmp_path):
  out = tmp_path / 'out'
  result = helpers.run_binary_in_process(
      'experiments.regression_lessons', '--small',
      '--lessons=fedsgd_equals_gd', f'--root_output_dir={out}')
  assert result.returncode == 0, result.stderr
  assert '| FedSGD equals centralized gradient descent |' in result.stdout
  assert os.path.exists(out / 'report' / 'fedsgd_equals_gd.png')
  assert os.path.exists(out / 'report' / 'lessons.md')
  assert os.path.exists(out / 'results' / 'fedsgd_equals_gd_small' /
                        'summary.json')


def test_binary_rejects_an_unknown_lesson(tmp_path):
  result = helpers.run_binary_in_process('experiments.regression_lessons',
                                         '--lessons=fedsgd_equals_gd,nope',
                                         f'--root_output_dir={tmp_path}')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: --lessons='nope' is not a known lesson")
  assert 'Traceback' not in result.stderr
