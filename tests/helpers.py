"""Helpers for tests that run binaries and watch processes."""

import json
import os
import signal
import subprocess
import sys

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


def run_binary(module: str, *args: str, timeout: float = 600,
               **kwargs) -> subprocess.CompletedProcess:
  """Runs `python -m <module> <args>` from the repository root."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, '-m', module, *args],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True,
      timeout=timeout, **kwargs,
  )


def _parent_pid(pid: int) -> int | None:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return int(f.read().rsplit(')', 1)[1].split()[1])
  except OSError:
    return None


def leaked_worker_pids(before: set[int]) -> set[int]:
  """Workers started since `before` whose parent has died (orphans).

  A worker whose parent is alive belongs to a running program (possibly
  another test run on the same machine); an orphan was left behind.
  """
  return {pid for pid in worker_binary_pids() - before
          if _parent_pid(pid) in (None, 1)}


def start_binary(module: str, *args: str,
                 capture: bool = True) -> subprocess.Popen:
  """Starts `python -m <module> <args>` from the repository root."""
  output = subprocess.PIPE if capture else subprocess.DEVNULL
  return subprocess.Popen(
      [sys.executable, '-m', module, *args], cwd=REPO_ROOT, stdout=output,
      stderr=output, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def rounds_completed(summary_path) -> int:
  """`rounds_completed` of a run's summary.json; 0 if not written yet."""
  try:
    with open(summary_path) as f:
      return json.load(f)['rounds_completed']
  except (OSError, ValueError, KeyError):
    return 0


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
