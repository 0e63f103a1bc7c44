"""Helpers shared by the benchmarks: timing, memory, CPU, FLOPs, output.

Nothing here is a result: every function measures or computes from its
arguments. Memory is read from Linux `/proc` (exact high-water marks) with
`psutil` sampling as a fallback, so the benchmarks need Linux for the
memory columns and print `n/a` elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psutil

from tff_pipeline.training import outputs

MIB = 1024 * 1024


def median(values: Sequence[float]) -> float:
  """Median of a non-empty sequence."""
  return float(statistics.median(values))


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


def rss_bytes(pid: int) -> int | None:
  """Current resident set size of a process, or None if it is gone."""
  try:
    return int(psutil.Process(pid).memory_info().rss)
  except psutil.Error:
    return None


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


def layer_forward_flops(model: Any) -> list[dict[str, Any]]:
  """Analytic forward FLOPs per example of each Conv2D and Dense layer.

  Convention: a multiply-add is 2 FLOPs; conv = 2*K*K*Cin*Cout*Hout*Wout,
  dense = 2*in*out; bias adds (one per output) are listed separately.
  Activations, pooling, reshapes and the loss are not counted.

  Args:
    model: A built Keras model.

  Returns:
    One dict per counted layer: name, kind, macs_flops, bias_flops.
  """
  # Imported here so that `common` stays importable without TensorFlow.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  rows = []
  for layer in model.layers:
    if isinstance(layer, tf.keras.layers.Conv2D):
      kh, kw, cin, cout = layer.kernel.shape
      _, h, w, _ = layer.output_shape
      macs = 2 * kh * kw * cin * cout * h * w
      bias = h * w * cout if layer.use_bias else 0
      kind = f'conv {kh}x{kw} {cin}->{cout} out {h}x{w}'
    elif isinstance(layer, tf.keras.layers.Dense):
      fan_in, fan_out = layer.kernel.shape
      macs = 2 * fan_in * fan_out
      bias = fan_out if layer.use_bias else 0
      kind = f'dense {fan_in}->{fan_out}'
    else:
      continue
    rows.append({'name': layer.name, 'kind': kind,
                 'macs_flops': int(macs), 'bias_flops': int(bias)})
  return rows


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(
        ['git', *args], cwd=os.path.dirname(os.path.abspath(__file__)),
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def library_version() -> dict[str, Any]:
  """The commit of the checkout, and the files changed since (the library
  may be edited between runs, which changes what is measured)."""
  status = _git('status', '--porcelain', '--', ':/tff_pipeline')
  return {
      'git_head': _git('rev-parse', '--short', 'HEAD'),
      'tff_pipeline_changed_files': (
          None if status is None else len(status.splitlines())),
  }


def environment_facts() -> dict[str, Any]:
  """Versions, cores, load and other TFF workers on the machine."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  return {
      **library_version(),
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'python': platform.python_version(),
      'tensorflow': tf.__version__,
      'tensorflow_federated': tff.__version__,
      'os_cpu_count': os.cpu_count(),
      'sched_affinity_cpus': (len(os.sched_getaffinity(0))
                              if hasattr(os, 'sched_getaffinity') else None),
      'machine': platform.machine(),
      'loadavg_1_5_15': list(os.getloadavg()),
  }


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


def fmt_seconds(value: float | None) -> str:
  return 'n/a' if value is None else f'{value:.3f} s'


def fmt_mib(value: float | None) -> str:
  return 'n/a' if value is None else f'{value / MIB:,.0f} MiB'


def print_table(title: str, rows: Sequence[tuple[str, str]],
                file: Any = None) -> None:
  """Prints (label, value) rows under a title, aligned; '' label = rule."""
  file = file or sys.stdout
  width = max((len(label) for label, _ in rows), default=0)
  print(f'\n{title}\n{"=" * len(title)}', file=file)
  for label, value in rows:
    if not label and not value:
      print('-' * (width + 24), file=file)
    else:
      print(f'{label:<{width}}  {value}', file=file)
  file.flush()


def print_grid(title: str, header: Sequence[str],
               rows: Sequence[Sequence[str]], file: Any = None) -> None:
  """Prints a table with a header row, columns right-aligned."""
  file = file or sys.stdout
  cells = [list(header)] + [list(r) for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  print(f'\n{title}\n{"=" * len(title)}', file=file)
  for n, row in enumerate(cells):
    print('  '.join(c.rjust(w) for c, w in zip(row, widths)), file=file)
    if n == 0:
      print('  '.join('-' * w for w in widths), file=file)
  file.flush()


def write_json(path: str, data: Mapping[str, Any]) -> None:
  """Writes `data` as JSON atomically, creating its directory.

  The pipeline's own writer (`outputs.atomic_write_json`): NumPy values
  become Python ones and non-finite floats become null.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  outputs.atomic_write_json(path, data)


# --- The federated round, exactly as the training loop runs it. -------------
#
# TensorFlow and the pipeline are imported inside these functions, not at the
# top of this module, so that `scaling.py`, which only launches one
# subprocess per setting, does not load TensorFlow itself.


def training_config(
    *,
    clients_per_round: int,
    client_learning_rate: float,
    server_learning_rate: float,
    client_batch_size: int = 10,
    client_epochs_per_round: int = 1,
    seed: int = 0,
) -> Any:
  """A `TrainingConfig` for FedAvg with client and server SGD.

  Nothing is written: the benchmarks never call `loop.prepare_outputs`, so
  `root_output_dir` is only a placeholder the config requires.
  """
  from tff_pipeline import config as config_lib  # pylint: disable=g-import-not-at-top

  return config_lib.TrainingConfig(
      experiment_name='benchmark',
      root_output_dir=os.path.join(tempfile.gettempdir(), 'tff_benchmark'),
      clients_per_round=clients_per_round,
      client_epochs_per_round=client_epochs_per_round,
      client_batch_size=client_batch_size,
      client_optimizer=config_lib.OptimizerConfig(
          name='sgd', learning_rate=client_learning_rate, role='client'),
      server_optimizer=config_lib.OptimizerConfig(
          name='sgd', learning_rate=server_learning_rate, role='server'),
      algorithm='fedavg',
      aggregator='mean',
      seed=seed,
  )


@dataclasses.dataclass
class RoundRecord:
  """Measurements of one federated round.

  Attributes:
    round_num: 1-based round number (drives sampling and shuffling).
    client_ids: The sampled clients.
    num_examples: Their examples in total (one epoch each).
    num_steps: Local steps (batches) of all the clients, E * ceil(n_i / B).
    inputs_seconds: Sampling and `loop.client_inputs` (tf.data construction).
    next_seconds: `process.next` (serialization, gRPC, worker compute,
      deserialization) plus reading the new global weights.
    seconds: The whole round, `inputs_seconds + next_seconds`.
    cpu_seconds: CPU seconds during the round: 'python' (this process, all
      threads), 'worker', 'others' (the rest of the machine), and 'wall'.
    train_loss: The clients' mean training loss reported by TFF, if any.
  """

  round_num: int
  client_ids: list[str]
  num_examples: int
  num_steps: int
  inputs_seconds: float
  next_seconds: float
  seconds: float
  cpu_seconds: dict[str, float]
  train_loss: float | None


class FederatedRounds:
  """Runs rounds of a task's learning process as `loop._train` does.

  Each round samples `clients_per_round` clients with the loop's
  `client_sampler` (seed, round), builds their data with
  `loop.client_inputs` and calls `algorithm.process.next`.

  Args:
    task: The task.
    config: The training configuration.
    algorithm: Built by `loop.build_algorithm(task, config)`.
    worker_pid: PID of the TFF worker, for CPU accounting (None: skipped).
  """

  def __init__(self, task: Any, config: Any, algorithm: Any,
               worker_pid: int | None):
    from tff_pipeline.training import loop  # pylint: disable=g-import-not-at-top

    self.task = task
    self.config = config
    self.algorithm = algorithm
    self.state: Any = None
    self._sample = loop.client_sampler(task, config)
    self._pids = {'python': os.getpid()}
    if worker_pid is not None:
      self._pids['worker'] = worker_pid

  @classmethod
  def start(cls, task: Any, config: Any, runtime: Any, memory: 'MemorySampler',
            setup: dict[str, float]) -> 'FederatedRounds':
    """Builds the process for `runtime`'s local worker and initializes it.

    Watches the worker's memory and records 'build_process' and
    'initialize' seconds in `setup`.
    """
    from tff_pipeline.training import loop  # pylint: disable=g-import-not-at-top

    worker_pid = runtime.local_worker.pid
    memory.watch('worker', worker_pid)
    start = time.perf_counter()
    algorithm = loop.build_algorithm(task, config)
    setup['build_process'] = time.perf_counter() - start
    rounds = cls(task, config, algorithm, worker_pid)
    start = time.perf_counter()
    rounds.initialize()
    setup['initialize'] = time.perf_counter() - start
    return rounds

  def initialize(self) -> None:
    self.state = self.algorithm.process.initialize()

  def run_round(self, round_num: int) -> RoundRecord:
    """Runs one round; the new state replaces the old one."""
    from tff_pipeline.training import loop  # pylint: disable=g-import-not-at-top

    with CpuMeter(self._pids) as cpu:
      start = time.perf_counter()
      client_ids = list(self._sample(round_num,
                                     self.config.clients_per_round))
      inputs, _ = loop.client_inputs(self.task, self.config, self.algorithm,
                                     round_num, client_ids)
      built = time.perf_counter()
      output = self.algorithm.process.next(self.state, inputs)
      weights = list(output.state.global_model_weights.trainable)
      end = time.perf_counter()
    del weights  # Read as the loop does; the values are already in NumPy.
    self.state = output.state
    metrics = loop.flatten_metrics(output.metrics)
    loss = metrics.get('client_work/train/loss')
    sizes = [self.task.train_data.num_examples(c) for c in client_ids]
    batch = self.config.client_batch_size
    steps = sum(1 if batch == -1 else -(-n // batch) for n in sizes)
    return RoundRecord(
        round_num=round_num, client_ids=client_ids,
        num_examples=int(sum(sizes)),
        num_steps=int(steps * self.config.client_epochs_per_round),
        inputs_seconds=built - start,
        next_seconds=end - built, seconds=end - start,
        cpu_seconds=dict(cpu.seconds), train_loss=loss)


def round_summary(records: Sequence[RoundRecord]) -> dict[str, Any]:
  """Medians (and extremes) of timed rounds."""
  seconds = [r.seconds for r in records]
  keys = records[0].cpu_seconds.keys()
  return {
      'rounds': len(records),
      'round_seconds_median': median(seconds),
      'round_seconds_min': min(seconds),
      'round_seconds_max': max(seconds),
      'round_seconds_all': seconds,
      'inputs_seconds_median': median([r.inputs_seconds for r in records]),
      'next_seconds_median': median([r.next_seconds for r in records]),
      'examples_per_round_median': median([r.num_examples for r in records]),
      'steps_per_round_median': median([r.num_steps for r in records]),
      'cpu_seconds_per_round_median': {
          k: median([r.cpu_seconds[k] for r in records]) for k in keys},
      'train_loss_by_round': [r.train_loss for r in records],
  }


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
      (('dnnl', 'mkl', 'jit_avx', 'jit_sse', 'brgemm', 'gemm', 'eigen::internal::gebp',
        'contraction', 'conv'), 'convolution / matmul kernels (oneDNN, Eigen)'),
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
