"""Smoke, error and signal tests of `python -m experiments.train_mnist`."""

import csv
import json
import os
import signal

import numpy as np
import pytest

from tests import helpers
from tff_pipeline.runtime import workers

MODULE = 'experiments.train_mnist'
TINY = ['--model=2nn', '--num_clients=20', '--clients_per_round=2',
        '--client_batch_size=50', '--total_rounds=2', '--progress=false']


def test_smoke_two_rounds(tmp_path):
  before = helpers.worker_binary_pids()
  done = helpers.run_binary(MODULE, '--experiment_name=smoke',
                            f'--root_output_dir={tmp_path}', *TINY)
  assert done.returncode == 0, done.stderr
  results = tmp_path / 'results' / 'smoke'
  with open(results / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['round_num'] for r in rows] == ['1', '2']
  assert {'eval/accuracy', 'eval/loss', 'client_work/train/loss',
          'round_seconds'} <= set(rows[0])
  summary = json.loads((results / 'summary.json').read_text())
  assert summary['rounds_completed'] == 2 and summary['status'] == 'completed'
  assert summary['final_eval_accuracy'] == pytest.approx(
      float(rows[-1]['eval/accuracy']))
  # Two rounds of two 3000-image clients already beat chance by far.
  assert summary['final_eval_accuracy'] > 0.8
  assert set(summary['eval_accuracy_by_round']) == {'1', '2'}
  assert len(summary['round_seconds']) == 2 and summary['setup_seconds'] > 0
  assert summary['task_facts']['model_parameters'] == 199_210
  with open(results / 'hparams.csv') as f:
    hparams = next(csv.DictReader(f))
  assert hparams['model'] == '2nn' and hparams['partition'] == 'iid'
  assert (results / 'accuracy.png').exists()
  assert 'final test accuracy' in done.stdout
  assert not helpers.leaked_worker_pids(before)


@pytest.mark.parametrize('args, message', [
    (['--clients_per_round=0'], '--clients_per_round=0 must be positive'),
    (['--clients_per_round=30'],
     '--clients_per_round=30 must not exceed --num_clients=20'),
    (['--partition=stripes'], '--partition=stripes: value should be one of'),
    (['--model=vgg'], '--model=vgg: value should be one of <cnn|2nn>'),
    (['--algorithm=fedmagic'], '--algorithm=fedmagic: value should be one of'),
    (['--client_learning_rate=0'], '--client_learning_rate=0.0 must be a '
     'positive'),
    (['--server_learning_rate=-1'], '--server_learning_rate=-1.0 must be'),
    (['--mnist_path=/no/such/mnist.npz'],
     '--mnist_path=/no/such/mnist.npz: no such file'),
    (['--total_rounds=many'], '--total_rounds=many'),
    (['stray'], 'unexpected positional arguments'),
])
def test_bad_input_gets_one_line(tmp_path, args, message):
  before = helpers.worker_binary_pids()
  done = helpers.run_binary_in_process(
      MODULE, '--experiment_name=bad', f'--root_output_dir={tmp_path}', *TINY,
      *args)
  assert done.returncode != 0
  errors = [l for l in done.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], done.stderr
  assert 'Traceback' not in done.stderr
  assert not helpers.leaked_worker_pids(before)


def test_corrupt_mnist_file_and_unwritable_output(tmp_path):
  corrupt = tmp_path / 'mnist.npz'
  corrupt.write_bytes(b'not a zip file at all')
  done = helpers.run_binary_in_process(
      MODULE, '--experiment_name=bad', f'--root_output_dir={tmp_path}', *TINY,
      f'--mnist_path={corrupt}')
  assert done.returncode == 2
  assert f'error: --mnist_path={corrupt}: not a readable .npz' in done.stderr
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  done = helpers.run_binary_in_process(
      MODULE, '--experiment_name=bad', f'--root_output_dir={blocker}', *TINY)
  assert done.returncode == 2
  assert f'error: --root_output_dir={blocker}: cannot write' in done.stderr
  assert 'Traceback' not in done.stderr


def test_missing_experiment_name(tmp_path):
  done = helpers.run_binary_in_process(MODULE, f'--root_output_dir={tmp_path}',
                                       *TINY)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == (
      'error: --experiment_name is required (or pass --flagfile=NAME.flags, '
      'which names the run NAME)')


# Both signals go through one handler (`runtime.lifecycle`): SIGTERM, whose
# default action would skip all cleanup, runs by default, SIGINT in
# `make test-slow`.
@pytest.mark.parametrize('signum', [
    pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_signal_saves_progress_stops_worker_and_resume_finishes(
    tmp_path, signum):
  # 2 clients of 30000 images, batch 50: a round takes a second or more, so
  # the signal lands in round 2 or 3.
  args = ['--experiment_name=sig', f'--root_output_dir={tmp_path}',
          '--model=2nn', '--num_clients=2', '--clients_per_round=1',
          '--client_batch_size=50', '--total_rounds=3',
          '--rounds_per_checkpoint=10', '--progress=false']
  before = helpers.worker_binary_pids()
  process = helpers.start_binary(MODULE, *args)
  summary_path = tmp_path / 'results' / 'sig' / 'summary.json'
  try:
    assert workers.wait_until(
        lambda: helpers.rounds_completed(summary_path) >= 1, timeout=300,
        interval=0.1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 130, stderr
  assert 'Run the same command again to resume' in stderr
  assert 'Traceback' not in stderr
  assert not helpers.leaked_worker_pids(before)
  completed = json.loads(summary_path.read_text())['rounds_completed']
  if completed < 3:
    assert json.loads(summary_path.read_text())['status'] == 'interrupted'
  checkpoints = os.listdir(tmp_path / 'checkpoints' / 'sig')
  assert f'round_{completed}' in checkpoints
  resumed = helpers.run_binary_in_process(MODULE, *args)
  assert resumed.returncode == 0, resumed.stderr
  summary = json.loads(summary_path.read_text())
  assert summary['resumed_from_round'] == completed
  assert summary['rounds_completed'] == 3
  with open(tmp_path / 'results' / 'sig' / 'experiment.metrics.csv') as f:
    assert [r['round_num'] for r in csv.DictReader(f)] == ['1', '2', '3']


def _last_row(root, name):
  with open(root / 'results' / name / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  # Timings and memory are measurements of the process, not of the model.
  timings = ('round_seconds', 'selection/evaluation_seconds')
  return rows, {k: v for k, v in rows[-1].items()
                if k not in timings and not k.startswith('memory/')}


def test_sigkill_after_a_checkpoint_then_rerun_gives_the_same_model(tmp_path):
  """Issue acceptance: 6 rounds of the 2NN with 10 clients per round, killed
  with SIGKILL after round 3's checkpoint and rerun, end with the model and
  the last CSV row of the uninterrupted run. The run has slow devices and a
  deadline, Oort's selection and feedback to lagging clients (issue 15), so
  the simulated clock and the per-client records must resume too."""
  # Batches of 50 (the binary's default is 10): rounds 4-6 still take
  # seconds, far longer than the 20 ms between looks at the summary.
  args = ['--experiment_name=kill', '--model=2nn', '--num_clients=100',
          '--clients_per_round=10', '--client_epochs_per_round=2',
          '--client_batch_size=50',
          '--total_rounds=6', '--rounds_per_checkpoint=3', '--progress=false',
          '--capacity_profile=minority', '--round_policy=deadline_partial',
          '--deadline_quantile=0.7', '--client_selection=oort', '--feedback']
  straight = helpers.run_binary_in_process(
      MODULE, *args, f'--root_output_dir={tmp_path / "straight"}')
  assert straight.returncode == 0, straight.stderr

  root = tmp_path / 'killed'
  before = helpers.worker_binary_pids()
  summary_path = root / 'results' / 'kill' / 'summary.json'
  helpers.kill_after_rounds(MODULE, [*args, f'--root_output_dir={root}'],
                            summary_path, 3)
  # The kernel stops the worker of a SIGKILLed run (PR_SET_PDEATHSIG).
  assert workers.wait_until(lambda: not helpers.leaked_worker_pids(before),
                            timeout=10)
  summary = json.loads(summary_path.read_text())
  assert 3 <= summary['rounds_completed'] < 6

  resumed = helpers.run_binary_in_process(MODULE, *args,
                                         f'--root_output_dir={root}')
  assert resumed.returncode == 0, resumed.stderr
  summary = json.loads((root / 'results' / 'kill' / 'summary.json').read_text())
  assert summary['resumed_from_round'] == 3
  for a, b in zip(helpers.final_weights(tmp_path / 'straight', 'kill'),
                  helpers.final_weights(root, 'kill')):
    np.testing.assert_allclose(a, b, atol=1e-6)
  rows, last = _last_row(root, 'kill')
  assert [r['round_num'] for r in rows] == ['1', '2', '3', '4', '5', '6']
  assert last == _last_row(tmp_path / 'straight', 'kill')[1]
  assert float(last['time/elapsed_seconds']) == pytest.approx(sum(
      float(r['time/round_seconds']) for r in rows), rel=1e-12)
