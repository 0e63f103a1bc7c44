"""The training loop, checked against NumPy and against itself on resume."""

import csv
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.training import loop

SPEC = regression.RegressionSpec(num_clients=5, examples_per_client=20,
                                 noise_std=0.3, size_exponent=1.0, seed=3)


def _config(tmp_path, **changes):
  base = config_lib.TrainingConfig(
      experiment_name='exp', root_output_dir=str(tmp_path), total_rounds=6,
      clients_per_round=5, client_batch_size=-1,
      client_optimizer=config_lib.OptimizerConfig(learning_rate=0.2),
      rounds_per_checkpoint=2, seed=1)
  return dataclasses.replace(base, **changes)


@pytest.fixture(scope='module')
def algorithm(task, tmp_path_factory, tff_runtime):
  del tff_runtime
  return loop.build_algorithm(task, _config(tmp_path_factory.mktemp('p')))


def _numpy_gradient_descent(x, y, lr, steps):
  """Full-batch GD on the pooled MSE from zero; returns the iterates."""
  design = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
  target = y.astype(np.float64).ravel()
  theta = np.zeros(design.shape[1])
  iterates = []
  for _ in range(steps):
    grad = 2.0 / len(design) * design.T @ (design @ theta - target)
    theta = theta - lr * grad
    iterates.append(theta.copy())
  return design, target, iterates


def test_one_full_batch_local_step_is_gradient_descent(
    task, shards, algorithm, tmp_path, tff_runtime):
  """FedAvg with all clients, one full-batch step and server lr 1 is GD on
  the pooled data: weights n_k/n make the averaged update the pooled
  gradient step."""
  result = loop.run_federated(task, _config(tmp_path), algorithm=algorithm,
                              runtime=tff_runtime, progress=False)
  design, target, iterates = _numpy_gradient_descent(
      shards.x, shards.y, 0.2, 6)
  np.testing.assert_allclose(
      tasks.flatten_linear_weights(result.final_weights), iterates[-1],
      atol=1e-5)
  for row, theta in zip(result.history, iterates):
    expected_loss = np.mean((design @ theta - target) ** 2)
    assert row['eval/loss'] == pytest.approx(expected_loss, rel=1e-5)


def test_run_round_is_the_process_call_it_wraps(task, algorithm, tmp_path,
                                                tff_runtime):
  """One round by hand (sample, client data, `next`) gives the same state,
  weights and row, bitwise, as `run_round`."""
  del tff_runtime
  # Sampling and shuffling matter: 3 of 5 clients, batches of 4, 2 epochs.
  config = _config(tmp_path, clients_per_round=3, client_batch_size=4,
                   client_epochs_per_round=2)
  state = algorithm.process.initialize()
  result = loop.run_round(task, config, algorithm, state, round_num=2)

  sampled = list(tff.simulation.build_uniform_sampling_fn(
      task.train_data.client_ids, replace=False, random_seed=config.seed)(
          2, 3))
  full_steps = [2 * task.steps_per_epoch(c, 4) for c in sampled]
  inputs, stats = loop.client_inputs(task, config, algorithm, 2, sampled,
                                     full_steps)
  output = algorithm.process.next(state, inputs)
  expected = list(output.state.global_model_weights.trainable)

  assert result.client_ids == sampled
  assert result.finite
  assert len(result.weights) == len(expected)
  for got, want in zip(result.weights, expected):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(result.state.global_model_weights.trainable, expected):
    np.testing.assert_array_equal(got, want)
  assert result.row == {**loop.flatten_metrics(output.metrics), **stats,
                        **result.scheduled.stats()}
  # Every client's budget is its full E epochs of ceil(n_i / B) batches.
  assert result.row['compute/mean_local_steps'] == pytest.approx(np.mean(
      [2 * task.steps_per_epoch(c, 4) for c in sampled]))
  assert 0 < result.inputs_seconds < result.seconds
  assert 0 < result.next_seconds < result.seconds


def test_run_round_reports_a_non_finite_model(task, algorithm, tmp_path,
                                              tff_runtime):
  del tff_runtime
  process = _PoisonedProcess(algorithm.process)
  process.rounds = 2  # The next call is the poisoned third.
  poisoned = dataclasses.replace(algorithm, process=process)
  result = loop.run_round(task, _config(tmp_path), poisoned,
                          algorithm.process.initialize(), round_num=1)
  assert not result.finite
  assert np.isnan(result.weights[0]).all()


def test_outputs_follow_the_contract(task, algorithm, tmp_path, tff_runtime):
  config = _config(tmp_path, total_rounds=3, rounds_per_eval=2)
  result = loop.run_federated(task, config, algorithm=algorithm,
                              runtime=tff_runtime, progress=False)
  results = tmp_path / 'results' / 'exp'
  with open(results / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['round_num'] for r in rows] == ['1', '2', '3']
  assert rows[0]['eval/loss'] == ''  # evaluated at rounds 2 and 3 only
  assert float(rows[2]['eval/distance_to_optimum']) == pytest.approx(
      result.summary['final_eval_distance_to_optimum'])
  assert float(rows[0]['client_work/train/num_examples']) == 100
  summary = json.loads((results / 'summary.json').read_text())
  assert summary['status'] == 'completed'
  assert summary['rounds_completed'] == 3
  assert len(summary['round_seconds']) == 3
  assert sorted(summary['eval_distance_to_optimum_by_round']) == ['2', '3']
  with np.load(results / 'final_weights.npz') as saved:
    np.testing.assert_array_equal(
        np.concatenate([saved['arr_0'].ravel(), saved['arr_1']]),
        summary['final_weights'])
  with open(results / 'hparams.csv') as f:
    hparams = next(csv.DictReader(f))
  assert hparams['client_learning_rate'] == '0.2'
  assert (results / 'loss.png').stat().st_size > 1000
  assert os.listdir(tmp_path / 'logdir' / 'exp')
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'exp')) == [
      'round_2', 'round_3', 'run_config.json']


class _Crash(Exception):
  pass


def test_resume_after_a_crash_gives_the_same_model(task, algorithm, tmp_path,
                                                   tff_runtime):
  # Sampling and shuffling matter: 3 of 5 clients per round, batches of 4.
  changes = dict(clients_per_round=3, client_batch_size=4,
                 client_epochs_per_round=2)
  straight = loop.run_federated(
      task, _config(tmp_path / 'a', **changes), algorithm=algorithm,
      runtime=tff_runtime, progress=False)

  def crash_after_round_3(round_num, row):
    del row
    if round_num == 3:
      raise _Crash()

  crashed_config = _config(tmp_path / 'b', **changes)
  with pytest.raises(_Crash):
    loop.run_federated(task, crashed_config, algorithm=algorithm,
                       runtime=tff_runtime, progress=False,
                       on_round_end=crash_after_round_3)
  resumed = loop.run_federated(task, crashed_config, algorithm=algorithm,
                               runtime=tff_runtime, progress=False)
  assert resumed.summary['resumed_from_round'] == 2
  for a, b in zip(straight.final_weights, resumed.final_weights):
    np.testing.assert_array_equal(a, b)
  with open(tmp_path / 'b' / 'results' / 'exp' / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['round_num'] for r in rows] == ['1', '2', '3', '4', '5', '6']
  # Timings and memory are measurements of the process, not of the model.
  def measured(k):
    return k == 'round_seconds' or k.startswith('memory/')

  last_straight = {k: v for k, v in straight.history[-1].items()
                   if not measured(k)}
  last_resumed = {k: v for k, v in resumed.history[-1].items()
                  if not measured(k)}
  assert last_straight == last_resumed


def test_resume_with_other_flags_is_refused(task, algorithm, tmp_path,
                                            tff_runtime):
  config = _config(tmp_path, total_rounds=2)
  loop.run_federated(task, config, algorithm=algorithm, runtime=tff_runtime,
                     progress=False, hparams={'client_learning_rate': 0.2})
  longer = dataclasses.replace(config, total_rounds=3)
  with pytest.raises(errors.CheckpointError,
                     match=r"--client_learning_rate=0.2 -> 0.3.*--allow_flag_changes"):
    loop.run_federated(task, longer, algorithm=algorithm, runtime=tff_runtime,
                       progress=False, hparams={'client_learning_rate': 0.3})
  # A longer run with the same flags resumes; so does an explicit override.
  result = loop.run_federated(task, longer, algorithm=algorithm,
                              runtime=tff_runtime, progress=False,
                              hparams={'client_learning_rate': 0.3},
                              allow_flag_changes=True)
  assert result.summary['resumed_from_round'] == 2
  assert result.summary['rounds_completed'] == 3


def test_corrupt_latest_checkpoint_falls_back(task, algorithm, tmp_path,
                                              tff_runtime, capsys):
  config = _config(tmp_path, total_rounds=4)
  straight = loop.run_federated(task, config, algorithm=algorithm,
                                runtime=tff_runtime, progress=False)
  checkpoint_dir = tmp_path / 'checkpoints' / 'exp'
  state_file = checkpoint_dir / 'round_4' / 'state.npz'
  state_file.write_bytes(state_file.read_bytes()[:100])  # A torn write.
  resumed = loop.run_federated(task, dataclasses.replace(config),
                               algorithm=algorithm, runtime=tff_runtime,
                               progress=False)
  assert 'round_4 is unreadable' in capsys.readouterr().out
  assert resumed.summary['resumed_from_round'] == 2
  assert (checkpoint_dir / 'corrupt_round_4').is_dir()
  for a, b in zip(straight.final_weights, resumed.final_weights):
    np.testing.assert_array_equal(a, b)


class _PoisonedProcess:
  """Delegates to a real process, but round 3 returns a NaN global model."""

  def __init__(self, process):
    self._process = process
    self.rounds = 0

  def initialize(self):
    return self._process.initialize()

  def next(self, state, data):
    output = self._process.next(state, data)
    self.rounds += 1
    if self.rounds == 3:
      weights = output.state.global_model_weights
      poisoned = weights.trainable[0] * np.nan
      weights.trainable[0] = poisoned
    return output


def test_non_finite_model_stops_with_the_round(task, algorithm, tmp_path,
                                               tff_runtime):
  config = _config(tmp_path, total_rounds=6)
  with pytest.raises(errors.TrainingError, match=r'round 3 produced a '
                     r'non-finite model update.*checkpoint \(round 2\) is '
                     'intact'):
    poisoned = dataclasses.replace(
        algorithm, process=_PoisonedProcess(algorithm.process))
    loop.run_federated(task, config, algorithm=poisoned,
                       runtime=tff_runtime, progress=False)
  summary = json.loads(
      (tmp_path / 'results' / 'exp' / 'summary.json').read_text())
  assert summary['status'] == 'failed'
  assert summary['rounds_completed'] == 2
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'exp')) == [
      'round_2', 'run_config.json']


def test_unwritable_output_dir_is_an_output_error(task, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  config = _config(blocker)
  with pytest.raises(errors.OutputError, match='--root_output_dir=.*file'):
    loop.prepare_outputs(config)
  shutil.rmtree(tmp_path, ignore_errors=True)


def test_memory_columns_are_the_processes_rss(task, algorithm, tmp_path,
                                              tff_runtime):
  """Each round's `memory/*` cells equal psutil's RSS read right after it."""
  psutil = pytest.importorskip('psutil')
  worker = psutil.Process(tff_runtime.local_worker_pids[0])
  seen = []

  def on_round_end(round_num, row):
    seen.append((round_num, row['memory/python_rss_mb'],
                 row['memory/worker_rss_mb'],
                 psutil.Process().memory_info().rss / 2**20,
                 worker.memory_info().rss / 2**20))

  loop.run_federated(task, _config(tmp_path, total_rounds=3),
                     algorithm=algorithm, runtime=tff_runtime,
                     progress=False, on_round_end=on_round_end)
  with open(tmp_path / 'results' / 'exp' / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r for r, *_ in seen] == [1, 2, 3]
  for row, (_, python, worker_mb, python_now, worker_now) in zip(rows, seen):
    assert float(row['memory/python_rss_mb']) == python
    assert float(row['memory/worker_rss_mb']) == worker_mb
    # Read a few milliseconds apart (the round's files are written between).
    assert python == pytest.approx(python_now, abs=20)
    assert worker_mb == pytest.approx(worker_now, abs=20)
    # Both processes hold TensorFlow: tens to hundreds of MiB, not bytes or
    # GiB (this task's worker measured ~100 MiB, its Python ~800 MiB).
    assert 100 < python < 8000 and 20 < worker_mb < 8000
