"""Measuring processes without TensorFlow: memory and CPU from Linux `/proc`
and `psutil`, the environment a worker starts with, other TFF workers.

Memory is read from `/proc` (exact high-water marks) with `psutil` sampling
as a fallback, so the benchmarks need Linux for the memory columns and
print `n/a` elsewhere. Nothing here imports TensorFlow (the current RSS is
`tff_pipeline.training.memory`'s, which does not either), so a driver that
only launches subprocesses can use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

import psutil

from tff_pipeline.training import memory as pipeline_memory


def _proc_status_kib(pid: int, field: str) -> int | None:
  """A `kB` field of /proc/PID/status (e.g. VmRSS, VmHWM), or None."""
  try:
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except (OSError, ValueError):
    pass
  return None


def peak_rss_bytes(pid: int) -> int | None:
  """Peak resident set size of a live process (Linux VmHWM), or None."""
  kib = _proc_status_kib(pid, 'VmHWM')
  return None if kib is None else kib * 1024


# Current resident set size of a process in bytes, or None if it is gone:
# the reading of the pipeline's memory columns.
rss_bytes = pipeline_memory.rss_bytes


def self_peak_rss_bytes() -> int:
  """Peak RSS of this process since it started (getrusage, Linux: KiB)."""
  scale = 1 if sys.platform == 'darwin' else 1024
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def cpu_seconds(pid: int) -> float | None:
  """User + system CPU seconds consumed so far by a process (not children)."""
  try:
    times = psutil.Process(pid).cpu_times()
  except psutil.Error:
    return None
  return float(times.user + times.system)


def system_busy_cpu_seconds() -> float:
  """CPU seconds all processes of the machine have used (all cores)."""
  times = psutil.cpu_times()
  # On Linux `guest` time is already part of `user`; idle, iowait and steal
  # are not work done on this machine's behalf.
  return float(sum(getattr(times, name, 0.0) for name in
                   ('user', 'nice', 'system', 'irq', 'softirq')))


class MemorySampler:
  """Samples the RSS of some processes in a background thread.

  The sampled peak is a lower bound of the true peak (a spike between two
  samples is missed); `peak_rss_bytes` (VmHWM) is exact on Linux. Both are
  reported.

  Args:
    interval: Seconds between samples.
  """

  def __init__(self, interval: float = 0.05):
    self.interval = interval
    self._pids: dict[str, int] = {}
    self.peaks: dict[str, int] = {}
    self._stop = threading.Event()
    self._lock = threading.Lock()
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name='memory-sampler')

  def watch(self, name: str, pid: int) -> None:
    """Starts sampling process `pid` under `name`."""
    with self._lock:
      self._pids[name] = pid
    self.sample()

  def sample(self) -> None:
    with self._lock:
      pids = dict(self._pids)
    for name, pid in pids.items():
      value = rss_bytes(pid)
      if value is not None:
        self.peaks[name] = max(self.peaks.get(name, 0), value)

  def _run(self) -> None:
    while not self._stop.wait(self.interval):
      self.sample()

  def __enter__(self) -> 'MemorySampler':
    self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self.sample()
    self._stop.set()
    self._thread.join()


@dataclasses.dataclass
class CpuMeter:
  """CPU seconds of named processes, and of the whole machine, over a span.

  `others` is the CPU time of everything else on the machine (other users'
  experiments), a direct measure of contention during the span; `steal` is
  time the hypervisor gave this VM's CPUs to someone else (Linux).
  """

  pids: Mapping[str, int]
  _start: dict[str, float] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)

  def __enter__(self) -> 'CpuMeter':
    self._start = {name: cpu_seconds(pid) or 0.0
                   for name, pid in self.pids.items()}
    self._start['_machine'] = system_busy_cpu_seconds()
    self._start['_steal'] = float(getattr(psutil.cpu_times(), 'steal', 0.0))
    self._wall = time.perf_counter()
    return self

  def __exit__(self, *exc_info) -> None:
    for name, pid in self.pids.items():
      end = cpu_seconds(pid)
      self.seconds[name] = (end or 0.0) - self._start[name]
    machine = system_busy_cpu_seconds() - self._start['_machine']
    ours = sum(self.seconds.values())
    self.seconds['others'] = max(machine - ours, 0.0)
    self.seconds['steal'] = (float(getattr(psutil.cpu_times(), 'steal', 0.0))
                             - self._start['_steal'])
    self.seconds['wall'] = time.perf_counter() - self._wall


def foreign_worker_pids(own: Sequence[int] = ()) -> list[int]:
  """PIDs of TFF `worker_binary` processes on the machine that are not ours.

  Only read, to report contention; never touched.
  """
  found = []
  for proc in psutil.process_iter(['pid', 'name', 'cmdline']):
    try:
      cmdline = proc.info['cmdline'] or []
      if (proc.info['pid'] not in own and cmdline
          and os.path.basename(cmdline[0]) == 'worker_binary'):
        found.append(proc.info['pid'])
    except psutil.Error:
      continue
  return sorted(found)


@contextlib.contextmanager
def environment_overrides(env: Mapping[str, str]) -> Iterator[None]:
  """Temporarily sets environment variables (e.g. while a worker starts).

  `WorkerProcess` copies `os.environ` into the worker; this process's own
  TensorFlow thread pools exist by then and do not change.
  """
  saved = {key: os.environ.get(key) for key in env}
  os.environ.update(env)
  try:
    yield
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


def parse_env_assignments(items: Sequence[str]) -> dict[str, str]:
  """['A=1', 'B=2'] -> {'A': '1', 'B': '2'}; raises ValueError otherwise."""
  env = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise ValueError(f'expected KEY=VALUE, got {item!r}')
    env[key] = value
  return env


def interpreter_startup_seconds(script_start_uptime: float | None
                                ) -> float | None:
  """Process start (exec) to `script_start_uptime`, from /proc (10 ms ticks).

  Args:
    script_start_uptime: /proc/uptime (seconds since boot) read at the top
      of the script.

  Both times are counted from boot, so the integer-second boot time that
  `psutil.Process().create_time()` adds does not blur the result.
  """
  if script_start_uptime is None:
    return None
  try:
    with open('/proc/self/stat', encoding='ascii') as f:
      # Field 22 (starttime, in clock ticks since boot), counted after the
      # parenthesised command name, which may contain spaces.
      fields = f.read().rsplit(')', 1)[1].split()
    start_ticks = int(fields[19])
  except (OSError, ValueError, IndexError):
    return None
  return script_start_uptime - start_ticks / os.sysconf('SC_CLK_TCK')
