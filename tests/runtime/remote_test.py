"""Remote TFF workers on loopback: same model as a local run, clear errors
when a worker dies, and resumption once it is back."""

from concurrent import futures
import csv
import json
import signal

import numpy as np
import portpicker
import pytest

from tests import helpers
from tff_pipeline.runtime import workers

MNIST_ARGS = ['--experiment_name=remote', '--model=2nn', '--num_clients=20',
              '--clients_per_round=4', '--client_batch_size=50',
              '--total_rounds=3', '--rounds_per_checkpoint=1',
              '--progress=false']


@pytest.fixture(scope='module')
def two_workers():
  """Two workers for the module (a test that kills one replaces it)."""
  before = helpers.worker_binary_pids()
  pool = [helpers.RunWorker(portpicker.pick_unused_port()) for _ in range(2)]
  yield pool
  for worker in pool:
    worker.stop()
  assert workers.wait_until(
      lambda: not helpers.leaked_worker_pids(before), timeout=10)


def test_two_workers_give_the_local_model(tmp_path, two_workers):
  addresses = ','.join(w.address for w in two_workers)
  remote = helpers.run_binary_in_process(
      'experiments.train_mnist', *MNIST_ARGS,
      f'--root_output_dir={tmp_path / "remote"}', f'--workers={addresses}')
  assert remote.returncode == 0, remote.stderr
  local = helpers.run_binary_in_process(
      'experiments.train_mnist', *MNIST_ARGS,
      f'--root_output_dir={tmp_path / "local"}')
  assert local.returncode == 0, local.stderr
  for a, b in zip(helpers.final_weights(tmp_path / 'remote', 'remote'),
                  helpers.final_weights(tmp_path / 'local', 'remote')):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # Remote workers are not our processes: only the coordinator is measured.
  for root, worker_known in (('remote', False), ('local', True)):
    with open(tmp_path / root / 'results' / 'remote' /
              'experiment.metrics.csv') as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
      assert 100 < float(row['memory/python_rss_mb']) < 8000
      worker_mb = float(row['memory/worker_rss_mb'])
      assert (20 < worker_mb < 8000) if worker_known else np.isnan(worker_mb)


def test_dead_worker_is_named_and_the_run_resumes(tmp_path, two_workers):
  root = tmp_path / 'run'
  addresses = ','.join(w.address for w in two_workers)
  # 2 clients of 3000 images a round, one on each worker: the round after
  # the kill needs the dead worker, and 4 rounds are left to run then.
  args = [*MNIST_ARGS, '--clients_per_round=2',
          '--client_batch_size=50', '--total_rounds=5',
          f'--root_output_dir={root}', f'--workers={addresses}',
          '--worker_connect_timeout=5']
  summary_path = root / 'results' / 'remote' / 'summary.json'
  # The run is in the binary's long-lived test process (no new interpreter);
  # this thread waits for its first round, then kills a worker.
  with futures.ThreadPoolExecutor(max_workers=1) as executor:
    running = executor.submit(helpers.run_binary_in_process,
                              'experiments.train_mnist', *args, timeout=420)
    assert workers.wait_until(
        lambda: helpers.rounds_completed(summary_path) >= 1, timeout=300,
        interval=0.2)
    two_workers[1].stop(signal.SIGKILL)
    run = running.result(timeout=480)
  assert run.returncode != 0
  error = [l for l in run.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1, run.stderr
  assert f'TFF worker {two_workers[1].address} is not reachable' in error[0]
  assert 'run the same command again to resume' in error[0]
  completed = json.loads(summary_path.read_text())['rounds_completed']
  assert completed < 5

  two_workers[1] = helpers.RunWorker(two_workers[1].port)
  resumed = helpers.run_binary_in_process('experiments.train_mnist', *args)
  assert resumed.returncode == 0, resumed.stderr
  summary = json.loads(summary_path.read_text())
  assert summary['rounds_completed'] == 5
  assert 1 <= summary['resumed_from_round'] <= completed
