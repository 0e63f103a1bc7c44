"""Per-round memory columns of the metrics CSV.

Every round the training loop adds two columns, read from the kernel
(`/proc/PID/statm` through psutil, a few microseconds each):

* `memory/python_rss_mb`: resident set size of this Python process, the
  coordinator, in MiB (2**20 bytes).
* `memory/worker_rss_mb`: resident set size of the TFF worker(s) this
  process started, in MiB; with remote workers (`--workers`) NaN, because
  those processes belong to other programs, possibly on other machines, and
  the coordinator measures only itself. Their own operators can read the
  RSS of `python -m experiments.run_worker`'s `worker_binary` child.

They let a long run show whether memory grows round after round (TFF's
tracker has several such reports, e.g. google-parfait/tensorflow-federated
#871, #903, #4590); `benchmarks/soak.py` measures it over 2,000 rounds.

Before measuring, the probe returns the freed part of this process's heap
to the kernel (glibc `malloc_trim(0)`). Without it the coordinator's RSS
crept up by ~130 MiB over 2,000 rounds of the 2NN: each round, each
evaluation (a fresh Keras model) and each checkpoint leaves freed but
fragmented heap pages behind, and glibc does not give them back by itself.
Trimming returned most of them (docs/memory.md, benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
from collections.abc import Callable, Sequence

import psutil

MIB = 1024 * 1024
PYTHON_RSS = 'memory/python_rss_mb'
WORKER_RSS = 'memory/worker_rss_mb'


def _malloc_trim() -> Callable[[int], int] | None:
  """glibc's `malloc_trim`, or None (not Linux, or a libc without it)."""
  if not sys.platform.startswith('linux'):
    return None
  try:
    trim = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6'
                       ).malloc_trim
  except (OSError, AttributeError):
    return None
  trim.argtypes = [ctypes.c_size_t]
  trim.restype = ctypes.c_int
  return trim


_MALLOC_TRIM = _malloc_trim()


def release_free_heap() -> bool:
  """Returns freed heap memory of this process to the kernel.

  Calls glibc `malloc_trim(0)`; a no-op returning False where it does not
  exist. Values are unaffected: only pages malloc holds as free are released.
  """
  if _MALLOC_TRIM is None:
    return False
  _MALLOC_TRIM(0)
  return True


def rss_bytes(pid: int) -> int | None:
  """Resident set size of process `pid` in bytes; None if it is gone."""
  try:
    return int(psutil.Process(pid).memory_info().rss)
  except psutil.Error:
    return None


def rss_mib(pid: int) -> float:
  """Resident set size of process `pid` in MiB; NaN if it is gone."""
  rss = rss_bytes(pid)
  return math.nan if rss is None else rss / MIB


def round_metrics(worker_pids: Sequence[int]) -> dict[str, float]:
  """The memory columns of one round.

  Args:
    worker_pids: PIDs of the local TFF workers (summed); empty with remote
      workers, which gives NaN for `memory/worker_rss_mb`.
  """
  workers = [rss_mib(pid) for pid in worker_pids]
  return {
      PYTHON_RSS: rss_mib(os.getpid()),
      WORKER_RSS: math.fsum(workers) if workers else math.nan,
  }


def probe(worker_pids: Callable[[], Sequence[int]]
          ) -> Callable[[], dict[str, float]]:
  """Once a round: `release_free_heap()`, then `round_metrics` of the PIDs
  that `worker_pids()` gives at that time."""

  def measure() -> dict[str, float]:
    release_free_heap()
    return round_metrics(worker_pids())

  return measure
