"""How round time and memory grow with clients per round and total clients.

  .venv/bin/python -m benchmarks.scaling [--model=2nn] [--rounds=3] \
      [--json=PATH]

Two sweeps, FedAvg, 1 local epoch, batch 10, IID MNIST:

  * clients per round 5, 10, 20, 40 at 100 total clients (600 examples
    each): the cost of each extra client in a round;
  * total clients 100, 1000, 3400 at 10 clients per round: the cost of a
    large federation (3400 clients of the 60000 images hold 17 or 18
    examples each, so a round trains on ~176 examples instead of 6000).

Every setting runs in a fresh subprocess (this script re-invoked with
`--setting=CLIENTS_PER_ROUND,NUM_CLIENTS`), so the peak RSS of one setting
is not inflated by the settings before it. For each setting it prints the
median round time after one warm-up round, its split into building the
client datasets and `process.next`, the time per client, the peak RSS of
the setting's Python process and of its TFF worker.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np
# Imported before `app.run`, not first inside `main`: on this install (TF
# 2.14, Keras 2.14, absl 1.4), TensorFlow imported for the first time inside
# an absl `main` builds Keras layers in graph mode, and `tf.keras.Sequential`
# then fails ("Output tensors of a Sequential model must be the output of a
# TensorFlow `Layer`").
import tensorflow as tf  # pylint: disable=unused-import

from benchmarks import measure
from benchmarks import report

_MODEL = flags.DEFINE_enum('model', '2nn', ['2nn', 'cnn'],
                           'Model of every setting.')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'Timed rounds per setting, after 1 warm-up round.',
    lower_bound=1)
_CLIENTS_PER_ROUND = flags.DEFINE_list(
    'clients_per_round_sweep', ['5', '10', '20', '40'],
    'Clients per round of the first sweep.')
_CLIENTS_PER_ROUND_TOTAL = flags.DEFINE_integer(
    'clients_per_round_sweep_num_clients', 100,
    'Total clients of the first sweep.')
_NUM_CLIENTS = flags.DEFINE_list(
    'num_clients_sweep', ['100', '1000', '3400'],
    'Total clients of the second sweep.')
_NUM_CLIENTS_PER_ROUND = flags.DEFINE_integer(
    'num_clients_sweep_clients_per_round', 10,
    'Clients per round of the second sweep.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.05,
                                'Client SGD learning rate.')
_SERVER_LR = flags.DEFINE_float('server_learning_rate', 1.0,
                                'Server SGD learning rate.')
_MAX_CONCURRENT = flags.DEFINE_integer(
    'max_concurrent_computation_calls', -1,
    'Passed to each setting\'s TFF worker; -1 is no limit (the default).')
_TIMEOUT = flags.DEFINE_integer('setting_timeout', 1800,
                                'Seconds before a setting is abandoned.')
_JSON = flags.DEFINE_string('json', '', 'Also write all numbers here.')
# Internal: run one setting in this process and write its JSON.
_SETTING = flags.DEFINE_string(
    'setting', '', 'Internal: CLIENTS_PER_ROUND,NUM_CLIENTS of one setting.')
_RESULT_JSON = flags.DEFINE_string(
    'result_json', '', 'Internal: where --setting writes its numbers.')

_SEED = 0


def run_setting(clients_per_round: int, num_clients: int) -> dict[str, Any]:
  """One setting, in this (fresh) process: setup, warm-up, timed rounds."""
  start = time.perf_counter()
  # pylint: disable=g-import-not-at-top
  from benchmarks import workload
  from tff_pipeline import runtime as runtime_lib
  from tff_pipeline import tasks
  # pylint: enable=g-import-not-at-top
  imports = time.perf_counter() - start

  start = time.perf_counter()
  task = tasks.build_mnist_task(tasks.MnistTaskSpec(
      model=_MODEL.value, partition='iid', num_clients=num_clients,
      seed=_SEED))
  data_seconds = time.perf_counter() - start
  rss_after_data = measure.rss_bytes(os.getpid())
  config = workload.training_config(
      clients_per_round=clients_per_round,
      client_learning_rate=_CLIENT_LR.value,
      server_learning_rate=_SERVER_LR.value, client_batch_size=10,
      client_epochs_per_round=1, seed=_SEED)
  config.validate(num_clients=num_clients)
  sizes = task.train_data.client_sizes()
  setup: dict[str, float] = {}
  with measure.MemorySampler() as memory:
    memory.watch('python', os.getpid())
    start = time.perf_counter()
    with runtime_lib.Runtime(
        max_concurrent_computation_calls=_MAX_CONCURRENT.value) as runtime:
      setup['worker_start'] = time.perf_counter() - start
      worker_pid = runtime.local_worker.pid
      worker_threads = runtime.local_worker.threads
      rounds = workload.FederatedRounds.start(task, config, runtime,
                                              memory, setup)
      first = rounds.run_round(1)
      timed = [rounds.run_round(n) for n in range(2, _ROUNDS.value + 2)]
      memory.sample()
      worker_peak = measure.peak_rss_bytes(worker_pid)
  summary = workload.round_summary(timed)
  return {
      'model': _MODEL.value,
      'clients_per_round': clients_per_round,
      'num_clients': num_clients,
      'worker_threads': worker_threads,
      'client_size_min': int(sizes.min()),
      'client_size_max': int(sizes.max()),
      'imports_seconds': imports,
      'data_seconds': data_seconds,
      'setup_seconds': setup,
      'first_round_seconds': first.seconds,
      **summary,
      'seconds_per_client': summary['round_seconds_median']
                            / clients_per_round,
      'python_peak_rss_bytes': measure.self_peak_rss_bytes(),
      'python_rss_after_data_bytes': rss_after_data,
      'python_sampled_peak_rss_bytes': memory.peaks.get('python'),
      'worker_peak_rss_bytes': worker_peak,
      'worker_sampled_peak_rss_bytes': memory.peaks.get('worker'),
      'leaked_workers': runtime_lib.live_worker_pids(),
      'loadavg_at_end': list(os.getloadavg()),
  }


def _launch(clients_per_round: int, num_clients: int,
            workdir: str) -> dict[str, Any]:
  """Runs one setting in a fresh Python process and returns its numbers."""
  path = os.path.join(workdir, f'{clients_per_round}_{num_clients}.json')
  command = [
      sys.executable, '-m', 'benchmarks.scaling',
      f'--setting={clients_per_round},{num_clients}',
      f'--result_json={path}', f'--model={_MODEL.value}',
      f'--rounds={_ROUNDS.value}',
      f'--client_learning_rate={_CLIENT_LR.value}',
      f'--server_learning_rate={_SERVER_LR.value}',
      f'--max_concurrent_computation_calls={_MAX_CONCURRENT.value}',
  ]
  print(f'  running clients_per_round={clients_per_round} '
        f'num_clients={num_clients} ...', flush=True)
  start = time.perf_counter()
  completed = subprocess.run(command, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             timeout=_TIMEOUT.value, check=False)
  if completed.returncode != 0 or not os.path.exists(path):
    sys.stderr.write(completed.stdout[-4000:])
    raise RuntimeError(
        f'setting {clients_per_round},{num_clients} failed with exit code '
        f'{completed.returncode}')
  with open(path, encoding='utf-8') as f:
    result = json.load(f)
  result['subprocess_seconds'] = time.perf_counter() - start
  return result


def _row(r: dict[str, Any]) -> list[str]:
  cpu = r['cpu_seconds_per_round_median']
  return [
      str(r['clients_per_round']), str(r['num_clients']),
      f"{r['client_size_min']}-{r['client_size_max']}",
      f"{r['examples_per_round_median']:.0f}",
      f"{r['round_seconds_median']:.3f}",
      f"{r['inputs_seconds_median']:.3f}",
      f"{r['next_seconds_median']:.3f}",
      f"{r['seconds_per_client'] * 1000:.0f}",
      f"{r['steps_per_round_median']:.0f}",
      f"{r['round_seconds_median'] / r['steps_per_round_median'] * 1000:.2f}",
      f"{cpu['python']:.2f}", f"{cpu['worker']:.2f}", f"{cpu['others']:.2f}",
      report.fmt_mib(r['python_peak_rss_bytes']),
      report.fmt_mib(r['python_sampled_peak_rss_bytes']),
      report.fmt_mib(r['worker_peak_rss_bytes']),
  ]


_HEADER = ['clients/round', 'clients', 'ex/client', 'ex/round',
           'round s', 'inputs s', 'next s', 'ms/client', 'steps',
           'ms/step',
           'cpu py', 'cpu wkr', 'cpu other', 'py peak', 'py rounds',
           'worker peak']


def _fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
  """Least-squares y = a + b x; returns (a, b)."""
  b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
  return float(a), float(b)


def _ratio(a: float | None, b: float | None) -> str:
  return 'n/a' if not a or not b else f'{a / b:.2f}x'


def drive() -> dict[str, Any]:
  """Runs every setting in its own subprocess; prints the tables."""
  facts = report.environment_facts()
  foreign = measure.foreign_worker_pids()
  cpr_values = [int(v) for v in _CLIENTS_PER_ROUND.value]
  total_values = [int(v) for v in _NUM_CLIENTS.value]
  settings = [(c, _CLIENTS_PER_ROUND_TOTAL.value) for c in cpr_values]
  settings += [(_NUM_CLIENTS_PER_ROUND.value, n) for n in total_values
               if (_NUM_CLIENTS_PER_ROUND.value, n) not in settings]
  results: dict[tuple[int, int], dict[str, Any]] = {}
  print(f'{len(settings)} settings, model {_MODEL.value}, {_ROUNDS.value} '
        'timed rounds each after 1 warm-up, each in a fresh process:')
  with tempfile.TemporaryDirectory(prefix='tff_scaling_') as workdir:
    for cpr, total in settings:
      results[(cpr, total)] = _launch(cpr, total, workdir)

  sweep1 = [results[(c, _CLIENTS_PER_ROUND_TOTAL.value)] for c in cpr_values]
  sweep2 = [results[(_NUM_CLIENTS_PER_ROUND.value, n)] for n in total_values]
  report.print_table('Environment', [
      ('date (UTC)', facts['date_utc']),
      ('TensorFlow / TFF', f"{facts['tensorflow']} / "
                           f"{facts['tensorflow_federated']}"),
      ('os.cpu_count()', str(facts['os_cpu_count'])),
      ('library (git HEAD, changed tff_pipeline files)',
       f"{facts['git_head']}, {facts['tff_pipeline_changed_files']}"),
      ('load average at start', ' '.join(
          f'{v:.2f}' for v in facts['loadavg_1_5_15'])),
      ('load average at end', ' '.join(
          f'{v:.2f}' for v in os.getloadavg())),
      ('other TFF workers at start', str(len(foreign))),
      ('model, E, B', f'{_MODEL.value}, 1, 10'),
      ('worker max_concurrent_computation_calls',
       str(_MAX_CONCURRENT.value)),
      ('worker thread pools', ', '.join(sorted({
          ', '.join(f'{k}={v}' for k, v in r['worker_threads'].items())
          for r in results.values()}))),
      ('timed rounds per setting', f'{_ROUNDS.value} (after 1 warm-up)'),
  ])
  print('\ncolumns: round/inputs/next s = medians; ms/client = round / '
        'clients per round; steps = local steps (batches) of all clients '
        'in a round, ms/step = round / steps; cpu = CPU s per round (the setting\'s Python '
        'process, its TFF worker, rest of the machine); py peak = the Python '
        'process\'s peak RSS over its life (getrusage), py rounds = its '
        'largest RSS sampled from worker start to the last round; worker '
        'peak = the worker\'s VmHWM')
  report.print_grid(
      f'Sweep 1: clients per round, {_CLIENTS_PER_ROUND_TOTAL.value} clients',
      _HEADER, [_row(r) for r in sweep1])
  report.print_grid(
      f'Sweep 2: total clients, {_NUM_CLIENTS_PER_ROUND.value} clients/round',
      _HEADER, [_row(r) for r in sweep2])

  intercept = slope = cpu_intercept = cpu_slope = None
  growth_rows = []
  if len({r['clients_per_round'] for r in sweep1}) >= 2:
    intercept, slope = _fit_line(
        [r['clients_per_round'] for r in sweep1],
        [r['round_seconds_median'] for r in sweep1])
    growth_rows += [
        ('least-squares fit: round s', f'{intercept:.3f} + {slope:.4f} x '
                                       'clients/round'),
        ('  fixed cost per round', f'{intercept:.3f} s'),
        ('  marginal cost per client', f'{slope * 1000:.0f} ms'),
    ]
    cpu_intercept, cpu_slope = _fit_line(
        [r['clients_per_round'] for r in sweep1],
        [r['cpu_seconds_per_round_median']['worker'] for r in sweep1])
    growth_rows += [
        ('least-squares fit: worker CPU s', f'{cpu_intercept:.3f} + '
                                            f'{cpu_slope:.4f} x clients/round'),
        ('  (CPU time is less sensitive than wall time to other jobs on '
         'the machine)', ''),
    ]
  lo, hi = sweep1[0], sweep1[-1]
  growth_rows += [
      (f"round time {hi['clients_per_round']} / {lo['clients_per_round']} "
       'clients', _ratio(hi['round_seconds_median'],
                         lo['round_seconds_median'])
       + f" (clients x{hi['clients_per_round'] / lo['clients_per_round']:.0f})"),
  ]
  for prev, cur in zip(sweep1, sweep1[1:]):
    growth_rows.append((
        f"  {prev['clients_per_round']} -> {cur['clients_per_round']}",
        _ratio(cur['round_seconds_median'], prev['round_seconds_median'])))
  report.print_table('Round time vs clients per round', growth_rows)

  small, large = sweep2[0], sweep2[-1]

  def compare(key: str, fmt: Any = report.fmt_mib) -> str:
    return (f'{fmt(large[key])} vs {fmt(small[key])} = '
            f'{_ratio(large[key], small[key])}')

  report.print_table(
      f"{large['num_clients']} clients vs {small['num_clients']} "
      f"({_NUM_CLIENTS_PER_ROUND.value} clients/round)", [
          ('python peak RSS, whole process life',
           compare('python_peak_rss_bytes')),
          ('python RSS after data load', compare('python_rss_after_data_bytes')),
          ('python RSS during rounds (sampled peak)',
           compare('python_sampled_peak_rss_bytes')),
          ('worker peak RSS (VmHWM)', compare('worker_peak_rss_bytes')),
          ('round time, median',
           compare('round_seconds_median', report.fmt_seconds)),
          ('data load + task build', compare('data_seconds',
                                             report.fmt_seconds)),
      ])
  report.print_grid(
      'Setup per setting (seconds)',
      ['clients/round', 'clients', 'data+task', 'worker start', 'build',
       'initialize', 'first round'],
      [[str(r['clients_per_round']), str(r['num_clients']),
        f"{r['data_seconds']:.2f}", f"{r['setup_seconds']['worker_start']:.2f}",
        f"{r['setup_seconds']['build_process']:.2f}",
        f"{r['setup_seconds']['initialize']:.2f}",
        f"{r['first_round_seconds']:.2f}"]
       for r in sweep1 + [r for r in sweep2 if r not in sweep1]])
  leaked = [r for r in results.values() if r['leaked_workers']]
  print(f'\nsettings that left a TFF worker running: {len(leaked)}')
  return {
      'environment': facts,
      'foreign_tff_workers_at_start': foreign,
      'loadavg_at_end': list(os.getloadavg()),
      'model': _MODEL.value,
      'rounds': _ROUNDS.value,
      'max_concurrent_computation_calls': _MAX_CONCURRENT.value,
      'settings': list(results.values()),
      'clients_per_round_fit': {'intercept_seconds': intercept,
                                'seconds_per_client': slope},
      'clients_per_round_worker_cpu_fit': (
          {'intercept_seconds': cpu_intercept,
           'seconds_per_client': cpu_slope} if slope is not None else None),
  }


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  if _SETTING.value:
    cpr, total = (int(v) for v in _SETTING.value.split(','))
    if not _RESULT_JSON.value:
      raise app.UsageError('--setting needs --result_json')
    report.write_json(_RESULT_JSON.value, run_setting(cpr, total))
    return
  result = drive()
  if _JSON.value:
    report.write_json(_JSON.value, result)
    print(f'\nwrote {_JSON.value}')


if __name__ == '__main__':
  app.run(main)
