"""Sampling profiles of a process with Linux `perf`, grouped by kind of work.

Needs only the `perf` binary; nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

# Shared objects whose self time is grouped under one readable name in the
# profile summary; anything else keeps the name of its file.
_DSO_GROUPS = (
    ('[kernel', 'Linux kernel (scheduling, page faults, futex waits)'),
    ('libtensorflow_framework', 'TensorFlow runtime (libtensorflow_framework)'),
    ('worker_binary', 'TFF worker binary (TF kernels, oneDNN, TFF executors)'),
    ('libc', 'libc (malloc, memcpy)'),
    ('libm', 'libm'),
    ('libstdc++', 'libstdc++'),
)


def _dso_group(dso: str) -> str:
  for needle, name in _DSO_GROUPS:
    if needle in dso:
      return name
  return os.path.basename(dso) or dso


def _symbol_group(symbol: str) -> str:
  """A coarse family for a C++ symbol: what kind of work it is."""
  s = symbol.lower()
  families = (
      (('dnnl', 'mkl', 'jit_avx', 'jit_sse', 'brgemm', 'gemm',
        'eigen::internal::gebp', 'contraction', 'conv'),
       'convolution / matmul kernels (oneDNN, Eigen)'),
      (('eigen',), 'other Eigen element-wise kernels'),
      (('threadpool', 'thread_pool', 'worker_loop', 'nonblocking', 'futex',
        'sched', 'spin', 'condition_variable', 'mutex', 'notify'),
       'thread pools, locks, scheduling'),
      (('malloc', 'free', 'memcpy', 'memmove', 'memset', 'alloc', 'bfc',
        'tensorbuffer'), 'memory: allocation and copies'),
      (('executor', 'process_function', 'kernel', 'opkernel', 'graph',
        'function', 'rendezvous', 'iterator', 'dataset'),
       'TF runtime: graph executor, functions, tf.data'),
      (('proto', 'grpc', 'serializ', 'tensorflow_federated', 'tensorflow::tff',
        'federated'), 'TFF executors, serialization, gRPC'),
  )
  for needles, family in families:
    if any(n in s for n in needles):
      return family
  return 'other'


@dataclasses.dataclass
class PerfProfile:
  """Samples a process's CPU with Linux `perf record` over a span.

  A sampling profile of the TFF worker (a C++ binary that Python profilers
  cannot see). `summary` holds the share of samples by shared object and by
  coarse kind of work, and the top symbols. Needs `perf` on PATH and
  permission to profile the process (root, or perf_event_paranoid <= 1);
  `error` says why when a profile could not be taken.
  """

  pid: int
  frequency: int = 499
  top: int = 15
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)
  error: str | None = None

  def __enter__(self) -> 'PerfProfile':
    self._dir = tempfile.mkdtemp(prefix='tff_perf_')
    self._data = os.path.join(self._dir, 'perf.data')
    self._proc = None
    try:
      self._proc = subprocess.Popen(
          ['perf', 'record', '-q', '-F', str(self.frequency), '-p',
           str(self.pid), '-o', self._data],
          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
      time.sleep(0.5)  # perf attaches asynchronously.
      if self._proc.poll() is not None:
        self.error = ('perf record exited: '
                      + self._proc.stderr.read().decode(errors='replace')
                      .strip()[:200])
        self._proc = None
    except OSError as e:
      self.error = f'perf not available ({e})'
    return self

  def __exit__(self, *exc_info) -> None:
    try:
      if self._proc is None:
        return
      self._proc.send_signal(2)  # SIGINT: perf writes its file and exits.
      try:
        self._proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self.error = 'perf record did not stop'
        return
      report = subprocess.run(
          ['perf', 'report', '-i', self._data, '--stdio', '--no-children',
           '--sort', 'dso,sym', '--percent-limit', '0.01', '-q'],
          capture_output=True, text=True, timeout=600, check=False)
      self.summary = self._summarize(report.stdout)
      if not self.summary['samples_percent_parsed']:
        self.error = ('perf report gave nothing: '
                      + report.stderr.strip()[:200])
    finally:
      shutil.rmtree(self._dir, ignore_errors=True)

  def _summarize(self, text: str) -> dict[str, Any]:
    by_dso: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    symbols: list[tuple[float, str, str]] = []
    for line in text.splitlines():
      parts = line.split(None, 3)
      if len(parts) < 4 or not parts[0].endswith('%'):
        continue
      try:
        share = float(parts[0][:-1])
      except ValueError:
        continue
      dso, symbol = parts[1], parts[3].strip()
      by_dso[_dso_group(dso)] = by_dso.get(_dso_group(dso), 0.0) + share
      kind = _symbol_group(symbol)
      by_kind[kind] = by_kind.get(kind, 0.0) + share
      symbols.append((share, os.path.basename(dso), symbol))
    symbols.sort(reverse=True)
    ordered = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1]))
    return {
        'samples_percent_parsed': sum(by_dso.values()),
        'by_shared_object': ordered(by_dso),
        'by_kind_of_work': ordered(by_kind),
        'top_symbols': [{'percent': p, 'dso': d, 'symbol': s[:160]}
                        for p, d, s in symbols[:self.top]],
    }
