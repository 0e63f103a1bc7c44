"""Helpers for tests that run binaries and watch processes."""

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import threading

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_binary_pids() -> set[int]:
  """PIDs of every running (not zombie) `worker_binary` on this machine."""
  pids = set()
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        cmdline = f.read()
      with open(f'/proc/{entry}/stat') as f:
        state = f.read().rsplit(')', 1)[1].split()[0]
    except OSError:
      continue
    if b'worker_binary' in cmdline.split(b'\0')[0] and state != 'Z':
      pids.add(int(entry))
  return pids


def worker_pids_with_env(name: str, value: str) -> set[int]:
  """Running workers whose environment has `name=value`.

  Other sessions may start TFF workers at the same time; workers inherit
  the environment of the program that started them, so a variable set for
  one run tells its workers apart.
  """
  needle = f'{name}={value}'.encode()
  pids = set()
  for pid in worker_binary_pids():
    try:
      with open(f'/proc/{pid}/environ', 'rb') as f:
        if needle in f.read().split(b'\0'):
          pids.add(pid)
    except OSError:  # Already gone.
      continue
  return pids


def run_binary(module: str, *args: str, timeout: float = 600,
               **kwargs) -> subprocess.CompletedProcess:
  """Runs `python -m <module> <args>` from the repository root."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, '-m', module, *args],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True,
      timeout=timeout, **kwargs,
  )


class _Driver:
  """A `tests.binary_driver` process serving one binary's command lines."""

  def __init__(self, module: str):
    self.module = module
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'tests.binary_driver', module], cwd=REPO_ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    self._answers = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()
    self._answer(timeout=600)  # Ready once the imports are done.

  def _read(self) -> None:
    for line in self.process.stdout:
      self._answers.put(line)
    self._answers.put(None)  # The driver has exited.

  def _answer(self, timeout: float) -> dict | None:
    try:
      line = self._answers.get(timeout=timeout)
    except queue.Empty:
      self.stop()
      raise
    return None if line is None else json.loads(line)

  def run(self, args, env, timeout) -> subprocess.CompletedProcess:
    self.process.stdin.write(json.dumps({'argv': args, 'env': env}) + '\n')
    self.process.stdin.flush()
    try:
      answer = self._answer(timeout)
    except queue.Empty:
      raise subprocess.TimeoutExpired([self.module, *args], timeout) from None
    if answer is None:  # Killed, e.g. by a signal: as a subprocess would be.
      self.process.wait()
      return subprocess.CompletedProcess([self.module, *args],
                                         self.process.returncode, '', '')
    return subprocess.CompletedProcess([self.module, *args],
                                       answer['returncode'], answer['stdout'],
                                       answer['stderr'])

  def alive(self) -> bool:
    return self.process.poll() is None

  def stop(self) -> None:
    if self.alive():
      # Its own session: this also ends any TFF worker it left running.
      os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait()


_DRIVERS: dict[str, _Driver] = {}


def _stop_drivers() -> None:
  for driver in _DRIVERS.values():
    driver.stop()


atexit.register(_stop_drivers)


def run_binary_in_process(module: str, *args: str, timeout: float = 600,
                          env: dict[str, str] | None = None
                         ) -> subprocess.CompletedProcess:
  """`run_binary`, without starting a Python interpreter for each run.

  The command line runs in a long-lived `tests.binary_driver` process for
  `module` (started on first use), through the same `cli.run_main(main)` as
  `python -m module`: same exit code, stdout and stderr, one import of
  TensorFlow and TFF per test session instead of one per run. A TFF worker
  the run leaves behind is found by `leaked_worker_pids`. Tests of what
  happens at interpreter start or exit (signals, SIGKILL) use `run_binary`
  or `start_binary`.

  Args:
    module: The binary, e.g. 'experiments.train_mnist'.
    *args: Its command-line arguments.
    timeout: Seconds; past them the driver is killed and
      `subprocess.TimeoutExpired` raised, as `subprocess.run` does.
    env: Environment variables added for this run (and the TFF workers it
      starts).
  """
  driver = _DRIVERS.get(module)
  if driver is None or not driver.alive():
    driver = _DRIVERS[module] = _Driver(module)
  return driver.run(list(args), dict(env or {}), timeout)


def _parent_pid(pid: int) -> int | None:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return int(f.read().rsplit(')', 1)[1].split()[1])
  except OSError:
    return None


def leaked_worker_pids(before: set[int]) -> set[int]:
  """Workers started since `before` that no running program owns.

  These are orphans (their parent has died), and workers of an idle
  `run_binary_in_process` driver (the run that started them has ended). A
  worker whose parent is alive otherwise belongs to a running program
  (possibly another test run on the same machine).
  """
  idle_drivers = {d.process.pid for d in _DRIVERS.values() if d.alive()}
  return {pid for pid in worker_binary_pids() - before
          if _parent_pid(pid) in (None, 1) or _parent_pid(pid) in idle_drivers}


def start_binary(module: str, *args: str,
                 capture: bool = True) -> subprocess.Popen:
  """Starts `python -m <module> <args>` from the repository root."""
  output = subprocess.PIPE if capture else subprocess.DEVNULL
  return subprocess.Popen(
      [sys.executable, '-m', module, *args], cwd=REPO_ROOT, stdout=output,
      stderr=output, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def final_weights(root, name: str) -> list[np.ndarray]:
  """The arrays of run `name`'s final_weights.npz under output root `root`."""
  with np.load(os.path.join(root, 'results', name,
                            'final_weights.npz')) as saved:
    return [saved[k] for k in saved.files]


def rounds_completed(summary_path) -> int:
  """`rounds_completed` of a run's summary.json; 0 if not written yet."""
  try:
    with open(summary_path) as f:
      return json.load(f)['rounds_completed']
  except (OSError, ValueError, KeyError):
    return 0


def kill_after_rounds(module: str, args: list[str], summary_path,
                      rounds: int) -> None:
  """Starts the binary and SIGKILLs it once `rounds` rounds are complete.

  The summary is rewritten after each round's checkpoint is saved, so "n
  rounds completed" means round n's checkpoint is whole (waiting for its
  directory alone raced with the summary write).
  """
  # Imported here: the runtime package starts nothing at import, but tests
  # that never kill a run need not load it.
  from tff_pipeline.runtime import workers  # pylint: disable=g-import-not-at-top
  process = start_binary(module, *args, capture=False)
  try:
    assert workers.wait_until(
        lambda: rounds_completed(summary_path) >= rounds, timeout=600,
        interval=0.02)
    assert process.poll() is None, 'the run ended before it could be killed'
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
  finally:
    process.kill()


def assert_one_line_error(done, message: str) -> None:
  """A run that exits 2 with one `error:` line containing `message`."""
  assert done.returncode == 2, done.stderr
  errors = [l for l in done.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], done.stderr
  assert 'Traceback' not in done.stderr


class RunWorker:
  """`python -m experiments.run_worker` as a subprocess on a loopback port.

  Waits for its "serving on" line; `args` are extra flags (e.g. --tls_*).
  """

  def __init__(self, port: int, *args: str):
    self.port = port
    self.args = args
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'experiments.run_worker', f'--port={port}',
         *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    line = self.process.stdout.readline()
    assert f'serving on 127.0.0.1:{port}' in line, line

  @property
  def address(self) -> str:
    return f'127.0.0.1:{self.port}'

  def stop(self, signum: int = signal.SIGINT) -> None:
    if self.process.poll() is None:
      self.process.send_signal(signum)
      self.process.wait(timeout=30)
