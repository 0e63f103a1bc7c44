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
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import psutil

MIB = 1024 * 1024
PYTHON_RSS = 'memory/python_rss_mb'
WORKER_RSS = 'memory/worker_rss_mb'


def rss_mib(pid: int) -> float:
  """Resident set size of process `pid` in MiB; NaN if it is gone."""
  try:
    return psutil.Process(pid).memory_info().rss / MIB
  except psutil.Error:
    return math.nan


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
  """A no-argument `round_metrics` that asks `worker_pids()` each time."""
  return lambda: round_metrics(worker_pids())
