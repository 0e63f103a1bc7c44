"""Soak test: does memory, or do file descriptors or threads, grow with rounds?

  .venv/bin/python -m benchmarks.soak --mode=local [--rounds=2000] [--json=P]
  .venv/bin/python -m benchmarks.soak --mode=remote [--rounds=2000] [--json=P]

Runs the FedAvg paper's 2NN through the pipeline's own training loop
(`loop.run_federated`: sampling, client datasets, `process.next`, evaluation,
CSV / TensorBoard / summary writes, checkpoints) for many rounds on tiny
clients (by default 6,000 IID clients of 10 images, 5 a round, batch 10: one
local step each), so that 2,000 rounds take minutes. `--mode=local` runs the
clients on the local worker the loop starts; `--mode=remote` starts two TFF
workers on loopback ports and runs with `--workers` on both (the remote
path: `RemoteExecutor` stubs and TFF's mergeable-computation context, each
round's clients split across the workers).

After every round it records, for this Python process and every TFF worker,
the resident set size (RSS), the number of open file descriptors and of
threads, from /proc. At the end it prints them at a few rounds and checks
the bound of issue 14: from `--baseline_round` (100) to the last round, the
RSS of each process grows by at most max(5%, 50 MB), and its file
descriptors and threads do not grow. It exits with status 1 if the bound is
broken. Run it from a fresh process (the loop's results go to a temporary
directory, removed at the end unless `--output_dir` is given).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags
import psutil
# Imported before `app.run` (see benchmarks/scaling.py): TensorFlow imported
# for the first time inside an absl `main` builds Keras models in graph mode.
import tensorflow as tf  # pylint: disable=unused-import

from benchmarks import measure
from benchmarks import report

_MODE = flags.DEFINE_enum('mode', 'local', ['local', 'remote'],
                          'local: one worker started by the loop; remote: '
                          'two loopback workers given as --workers.')
_ROUNDS = flags.DEFINE_integer('rounds', 2000, 'Rounds to run.',
                               lower_bound=1)
_BASELINE = flags.DEFINE_integer(
    'baseline_round', 100, 'Growth is measured from this round on.',
    lower_bound=1)
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 6000,
                                    'IID clients of the 60,000 images.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 5,
                                          'Clients sampled a round.')
_BATCH = flags.DEFINE_integer('client_batch_size', 10, 'Client batch size.')
_EVAL_EVERY = flags.DEFINE_integer('rounds_per_eval', 50,
                                   'Central evaluation every this many rounds.')
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    'rounds_per_checkpoint', 100, 'Checkpoint every this many rounds.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', '', 'Keep the run\'s outputs here (default: a temporary '
    'directory, removed at the end).')
_JSON = flags.DEFINE_string('json', '', 'Also write all numbers here.')

_SEED = 0
# The bound of issue 14: growth of at most max(5%, 50 MB) after the baseline.
RSS_GROWTH_FRACTION = 0.05
RSS_GROWTH_FLOOR_MIB = 50e6 / report.MIB
REPORT_ROUNDS = (100, 500, 1000, 2000)


def process_counts(pid: int) -> dict[str, float] | None:
  """RSS (MiB), open file descriptors and threads of a live process."""
  rss = measure.rss_bytes(pid)
  try:
    process = psutil.Process(pid)
    fds, threads = process.num_fds(), process.num_threads()
  except psutil.Error:
    return None
  if rss is None:
    return None
  return {'rss_mib': rss / report.MIB, 'fds': fds, 'threads': threads}


@dataclasses.dataclass
class Series:
  """Per-round samples of one process: round -> {rss_mib, fds, threads}."""

  name: str
  pid: int
  samples: dict[int, dict[str, float]] = dataclasses.field(
      default_factory=dict)

  def record(self, round_num: int) -> None:
    counts = process_counts(self.pid)
    if counts is not None:
      self.samples[round_num] = counts

  def value(self, key: str, round_num: int) -> float | None:
    sample = self.samples.get(round_num)
    return None if sample is None else sample[key]


def rss_bound_mib(baseline_mib: float) -> float:
  """Allowed RSS growth after the baseline round: max(5%, 50 MB), in MiB."""
  return max(RSS_GROWTH_FRACTION * baseline_mib, RSS_GROWTH_FLOOR_MIB)


def verdict(samples: Mapping[int, Mapping[str, float]],
            baseline_round: int, window: int = 100) -> dict[str, Any]:
  """Checks one process's samples against the soak bound.

  RSS: from `baseline_round` to the last sampled round it may grow by at most
  `rss_bound_mib` of its baseline value. File descriptors and threads come
  and go within a round (checkpoint writers, gRPC and TensorFlow pools), so
  they are compared window against window: the most held in the last
  `window` rounds may not exceed the most held in the `window` rounds from
  `baseline_round` on (both windows shrink to half the span if it is short).

  Args:
    samples: round -> {'rss_mib', 'fds', 'threads'}; must hold the baseline
      round and a later one.
    baseline_round: Where growth is measured from.
    window: Rounds per window of the fd and thread comparison.

  Returns:
    The baseline and last values, the growth, the bound and `ok`.
  """
  last = max(samples)
  if baseline_round not in samples or last <= baseline_round:
    raise ValueError(f'need samples at round {baseline_round} and after it; '
                     f'have rounds {min(samples)}..{last}')
  window = max(1, min(window, (last - baseline_round + 1) // 2))
  first_window = [s for r, s in samples.items()
                  if baseline_round <= r < baseline_round + window]
  last_window = [s for r, s in samples.items() if r > last - window]
  after = [s for r, s in samples.items() if r >= baseline_round]
  base, end = samples[baseline_round], samples[last]
  growth = end['rss_mib'] - base['rss_mib']
  bound = rss_bound_mib(base['rss_mib'])
  result = {
      'baseline_round': baseline_round,
      'last_round': last,
      'window': window,
      'rss_mib_baseline': base['rss_mib'],
      'rss_mib_last': end['rss_mib'],
      'rss_growth_mib': growth,
      'rss_bound_mib': bound,
      'rss_mib_max_after_baseline': max(s['rss_mib'] for s in after),
      'rss_ok': growth <= bound,
  }
  for key in ('fds', 'threads'):
    first = max(s[key] for s in first_window)
    final = max(s[key] for s in last_window)
    result.update({
        f'{key}_baseline': base[key], f'{key}_last': end[key],
        f'{key}_max_first_window': first, f'{key}_max_last_window': final,
        f'{key}_max_after_baseline': max(s[key] for s in after),
        f'{key}_ok': final <= first,
    })
  result['ok'] = result['rss_ok'] and result['fds_ok'] and result['threads_ok']
  return result


def growth_by_round_kind(samples: Mapping[int, Mapping[str, float]],
                         baseline_round: int, rounds_per_eval: int,
                         rounds_per_checkpoint: int
                         ) -> dict[str, dict[str, float]]:
  """Where the RSS grew: the change from each round to the next, summed
  over the rounds after `baseline_round` by what the round did.

  A round that writes a checkpoint (every `rounds_per_checkpoint` rounds,
  and the last) is 'checkpoint' (it may also evaluate); one that only
  evaluates is 'eval'; the rest are 'plain'. The three sums add up to the
  growth from the baseline round to the last.

  Returns:
    kind -> {'rounds': how many, 'rss_change_mib': summed change}.
  """
  last = max(samples)
  kinds = {kind: {'rounds': 0, 'rss_change_mib': 0.0}
           for kind in ('checkpoint', 'eval', 'plain')}
  for r in range(baseline_round + 1, last + 1):
    if r not in samples or r - 1 not in samples:
      continue
    if r % rounds_per_checkpoint == 0 or r == last:
      kind = 'checkpoint'
    elif r % rounds_per_eval == 0:
      kind = 'eval'
    else:
      kind = 'plain'
    kinds[kind]['rounds'] += 1
    kinds[kind]['rss_change_mib'] += (samples[r]['rss_mib']
                                      - samples[r - 1]['rss_mib'])
  return kinds


def _config(root: str) -> Any:
  from tff_pipeline import config as config_lib  # pylint: disable=g-import-not-at-top

  return config_lib.TrainingConfig(
      experiment_name=f'soak_{_MODE.value}',
      root_output_dir=root,
      total_rounds=_ROUNDS.value,
      clients_per_round=_CLIENTS_PER_ROUND.value,
      client_batch_size=_BATCH.value,
      client_optimizer=config_lib.OptimizerConfig(
          name='sgd', learning_rate=0.05, role='client'),
      server_optimizer=config_lib.OptimizerConfig(
          name='sgd', learning_rate=1.0, role='server'),
      rounds_per_eval=_EVAL_EVERY.value,
      rounds_per_checkpoint=_CHECKPOINT_EVERY.value,
      seed=_SEED,
  )


def run_soak(root: str) -> dict[str, Any]:
  """Trains in this process, sampling every process after every round."""
  from tff_pipeline import runtime as runtime_lib  # pylint: disable=g-import-not-at-top
  from tff_pipeline import tasks  # pylint: disable=g-import-not-at-top
  from tff_pipeline.training import loop  # pylint: disable=g-import-not-at-top
  from tff_pipeline.training import memory as memory_lib  # pylint: disable=g-import-not-at-top

  task = tasks.build_mnist_task(tasks.MnistTaskSpec(
      model='2nn', partition='iid', num_clients=_NUM_CLIENTS.value,
      seed=_SEED))
  config = _config(root)
  remote_workers: list[runtime_lib.WorkerProcess] = []
  series: dict[str, Series] = {'python': Series('python', os.getpid())}
  seconds: dict[int, float] = {}
  csv_memory: dict[int, dict[str, float]] = {}

  def on_round_end(round_num: int, row: Mapping[str, float]) -> None:
    if len(series) == 1:  # The local worker exists once the loop runs.
      for n, pid in enumerate(sorted(runtime_lib.live_worker_pids())):
        series[f'worker{n}'] = Series(f'worker{n}', pid)
    for s in series.values():
      s.record(round_num)
    seconds[round_num] = row['round_seconds']
    csv_memory[round_num] = {k: row[k] for k in row if k.startswith('memory/')}

  # What the loop's per-round `malloc_trim` costs: time each call.
  trim_seconds: list[float] = []
  release_free_heap = memory_lib.release_free_heap

  def timed_release_free_heap() -> bool:
    trim_start = time.perf_counter()
    released = release_free_heap()
    trim_seconds.append(time.perf_counter() - trim_start)
    return released

  start = time.perf_counter()
  memory_lib.release_free_heap = timed_release_free_heap
  try:
    if _MODE.value == 'remote':
      remote_workers = [runtime_lib.WorkerProcess().start() for _ in range(2)]
    loop.run_federated(
        task, config, workers=[w.address for w in remote_workers],
        progress=False, on_round_end=on_round_end)
  finally:
    memory_lib.release_free_heap = release_free_heap
    for worker in remote_workers:
      worker.stop()
  wall = time.perf_counter() - start
  leaked = runtime_lib.live_worker_pids()
  verdicts = {name: verdict(s.samples, _BASELINE.value)
              for name, s in series.items()}
  growth_by_kind = {
      name: growth_by_round_kind(s.samples, _BASELINE.value,
                                 _EVAL_EVERY.value, _CHECKPOINT_EVERY.value)
      for name, s in series.items()}
  return {
      'mode': _MODE.value,
      'rounds': _ROUNDS.value,
      'num_clients': _NUM_CLIENTS.value,
      'clients_per_round': _CLIENTS_PER_ROUND.value,
      'client_batch_size': _BATCH.value,
      'rounds_per_eval': _EVAL_EVERY.value,
      'rounds_per_checkpoint': _CHECKPOINT_EVERY.value,
      'wall_seconds': wall,
      'round_seconds_median': report.median(list(seconds.values())),
      'wall_seconds_per_round': wall / max(1, len(seconds)),
      'malloc_trim_calls': len(trim_seconds),
      'malloc_trim_seconds_median': (report.median(trim_seconds)
                                     if trim_seconds else None),
      'malloc_trim_seconds_total': math.fsum(trim_seconds),
      'verdicts': verdicts,
      'growth_by_round_kind': growth_by_kind,
      'ok': all(v['ok'] for v in verdicts.values()),
      'leaked_workers': leaked,
      'samples': {name: {str(r): v for r, v in s.samples.items()}
                  for name, s in series.items()},
      'pids': {name: s.pid for name, s in series.items()},
      'csv_memory_columns': {str(r): v for r, v in csv_memory.items()},
      'round_seconds': {str(r): v for r, v in seconds.items()},
  }


def _fmt(value: float | None, digits: int = 0) -> str:
  return 'n/a' if value is None or math.isnan(value) else f'{value:,.{digits}f}'


def print_report(result: Mapping[str, Any], series_rounds: Sequence[int]
                 ) -> None:
  """Values at `series_rounds` and the verdict of each process."""
  samples = result['samples']
  for key, digits in (('rss_mib', 1), ('fds', 0), ('threads', 0)):
    report.print_grid(
        f'{key} by round ({result["mode"]})',
        ['process', *[str(r) for r in series_rounds]],
        [[name, *[_fmt((s.get(str(r)) or {}).get(key), digits)
                  for r in series_rounds]]
         for name, s in samples.items()])
  rows = []
  for name, v in result['verdicts'].items():
    rows.append([
        name, f'{v["baseline_round"]}->{v["last_round"]}',
        _fmt(v['rss_growth_mib'], 1), _fmt(v['rss_bound_mib'], 1),
        f'{v["fds_max_first_window"]}->{v["fds_max_last_window"]}',
        f'{v["threads_max_first_window"]}->{v["threads_max_last_window"]}',
        'ok' if v['ok'] else 'BROKEN'])
  report.print_grid(
      'Growth after the baseline round (bound: RSS max(5%, 50 MB); fds and '
      'threads: most held in the last window <= in the first)',
      ['process', 'rounds', 'RSS growth MiB', 'bound MiB', 'fds (max)',
       'threads (max)', 'verdict'], rows)
  kinds = ('checkpoint', 'eval', 'plain')
  report.print_grid(
      'RSS change after the baseline round, summed by what the round did '
      '(MiB, rounds)',
      ['process', *kinds],
      [[name, *[f'{_fmt(g[k]["rss_change_mib"], 1)} ({g[k]["rounds"]})'
                for k in kinds]]
       for name, g in result['growth_by_round_kind'].items()])
  print(f'\nwall {result["wall_seconds"]:.0f} s, median round '
        f'{result["round_seconds_median"] * 1000:.0f} ms; leaked workers: '
        f'{result["leaked_workers"] or "none"}', flush=True)
  if result['malloc_trim_calls']:
    print(f'malloc_trim: {result["malloc_trim_calls"]} calls, median '
          f'{result["malloc_trim_seconds_median"] * 1000:.2f} ms, total '
          f'{result["malloc_trim_seconds_total"]:.1f} s '
          f'({result["malloc_trim_seconds_total"] / result["wall_seconds"]:.1%}'
          ' of the wall time)', flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _ROUNDS.value <= _BASELINE.value:
    raise app.UsageError(
        f'--rounds={_ROUNDS.value} must exceed --baseline_round='
        f'{_BASELINE.value}')
  environment = report.environment_facts()
  report.print_table('Environment', [(k, str(v)) for k, v in
                                     environment.items()])
  root = _OUTPUT_DIR.value or tempfile.mkdtemp(prefix='tff_soak_')
  try:
    result = run_soak(root)
  finally:
    if not _OUTPUT_DIR.value:
      shutil.rmtree(root, ignore_errors=True)
  result['environment'] = environment
  result['loadavg_at_end'] = list(os.getloadavg())
  rounds = sorted({r for r in (_BASELINE.value, *REPORT_ROUNDS)
                   if r <= _ROUNDS.value} | {_ROUNDS.value})
  print_report(result, rounds)
  if _JSON.value:
    report.write_json(_JSON.value, result)
  sys.exit(0 if result['ok'] else 1)


if __name__ == '__main__':
  app.run(main)
