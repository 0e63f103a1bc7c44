"""The pipeline owns its TFF worker processes on every exit path."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_federated as tff

from tests import helpers
from tff_pipeline import errors
from tff_pipeline import runtime as runtime_lib
from tff_pipeline.runtime import workers


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def _sum(values):
  return tff.federated_sum(values)


def _environ_of(pid: int) -> dict[str, str]:
  with open(f'/proc/{pid}/environ', 'rb') as f:
    items = f.read().split(b'\0')
  return dict(item.decode().split('=', 1) for item in items if b'=' in item)


def test_runtime_runs_computations_and_stops_its_worker():
  with runtime_lib.Runtime() as runtime:
    pid = runtime.local_worker.pid
    assert pid in helpers.worker_binary_pids()
    if sys.platform.startswith('linux'):
      environ = _environ_of(pid)
      for name, value in runtime.local_worker.threads.items():
        assert environ[name] == value
      for name, value in workers.WORKER_MALLOC_ENV.items():
        assert environ[name] == os.environ.get(name, value)
    assert _sum([1.0, 2.0, 3.5]) == pytest.approx(6.5)
  assert pid not in helpers.worker_binary_pids()
  assert pid not in runtime_lib.live_worker_pids()


def test_worker_dies_with_its_parent_even_on_sigkill():
  script = ('from tff_pipeline import runtime; import time\n'
            'r = runtime.Runtime(); print(r.local_worker.pid, flush=True)\n'
            'time.sleep(300)\n')
  parent = subprocess.Popen([sys.executable, '-c', script],
                            cwd=helpers.REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
  try:
    worker_pid = int(parent.stdout.readline())
    assert worker_pid in helpers.worker_binary_pids()
  finally:
    parent.kill()
    parent.wait()
  assert workers.wait_until(
      lambda: worker_pid not in helpers.worker_binary_pids(), timeout=10)


def test_dead_worker_is_reported_not_retried_forever():
  with runtime_lib.Runtime(connect_timeout=2) as runtime:
    assert _sum([1.0]) == 1.0
    os.kill(runtime.local_worker.pid, signal.SIGKILL)
    runtime.local_worker._process.wait()  # pylint: disable=protected-access
    start = time.monotonic()
    with pytest.raises(errors.RuntimeUnavailableError,
                       match=r'local TFF worker \(pid \d+.*exited'):
      _sum([2.0])
    assert time.monotonic() - start < 60


def test_unreachable_remote_worker_names_its_address():
  with pytest.raises(errors.RuntimeUnavailableError,
                     match='TFF worker localhost:1 is not reachable'):
    runtime_lib.Runtime(['localhost:1'], connect_timeout=1)


@pytest.mark.parametrize('spec, message', [
    ('localhost', 'not host:port'),
    ('host:0', 'not host:port'),
    ('host:99999', 'not host:port'),
    ('a:1,a:1', 'twice'),
])
def test_bad_worker_addresses(spec, message):
  with pytest.raises(errors.UsageError, match=message):
    runtime_lib.parse_worker_addresses(spec)


def test_worker_addresses_parse():
  assert runtime_lib.parse_worker_addresses(' h1:80, 10.0.0.2:8000 ') == [
      'h1:80', '10.0.0.2:8000']


def test_worker_thread_defaults_env_and_arguments(monkeypatch):
  cores = os.cpu_count() or 1
  intra, inter = workers.INTRA_OP_THREADS_ENV, workers.INTER_OP_THREADS_ENV
  assert workers.thread_env(environ={}) == {intra: '1',
                                            inter: str(4 * cores)}
  assert workers.thread_env(environ={intra: '3', inter: ' 5 '}) == {
      intra: '3', inter: '5'}
  assert workers.thread_env(2, 7, environ={intra: '3', inter: '5'}) == {
      intra: '2', inter: '7'}
  monkeypatch.setenv(intra, '2')
  assert workers.WorkerProcess(port=1).threads[intra] == '2'


def test_worker_malloc_settings_are_defaults_ours_win(monkeypatch):
  for name in workers.WORKER_MALLOC_ENV:
    monkeypatch.delenv(name, raising=False)
  env = workers.WorkerProcess(port=1).environment()
  assert env['MALLOC_ARENA_MAX'] == '1'
  monkeypatch.setenv('MALLOC_ARENA_MAX', '8')
  assert workers.WorkerProcess(port=1).environment()['MALLOC_ARENA_MAX'] == '8'
  env = workers.WorkerProcess(
      port=1, extra_env={'MALLOC_ARENA_MAX': '2'}).environment()
  assert env['MALLOC_ARENA_MAX'] == '2'


@pytest.mark.parametrize('intra, inter, environ', [
    (0, None, {}),
    (None, -2, {}),
    (None, None, {workers.INTRA_OP_THREADS_ENV: 'many'}),
    (None, None, {workers.INTER_OP_THREADS_ENV: '0'}),
])
def test_bad_worker_thread_counts_are_usage_errors(intra, inter, environ):
  with pytest.raises(errors.UsageError, match='positive integer'):
    workers.thread_env(intra, inter, environ=environ)
