"""Cost of a federated round against plain Keras, on the paper's CNN.

  .venv/bin/python -m benchmarks.round_overhead [--rounds=5] [--json=PATH] \
      [--profile_worker] [--worker_env=TF_NUM_INTRAOP_THREADS=1,...]

One process, one run, one fixed workload: the FedAvg paper CNN on 100 IID
MNIST clients of 600 images, 10 clients a round, 1 local epoch, batch 10,
client SGD 0.05, server SGD 1.0. It measures and prints:

  * time to the first round, from the top of this file (before TensorFlow
    is imported) through data load, worker start, process build,
    `initialize` and the first `next`, with each part;
  * the median federated round after that warm-up round (the training
    loop's own `loop.run_round`), split into building the client datasets
    (`loop.client_inputs`) and `process.next`, with the CPU seconds of this
    process, of the TFF worker and of everything else on the machine during
    the round, and the scheduler's share (sampling, devices, the simulated
    clock and the round policy) as a ratio of the round;
  * the median of a plain Keras `model.fit` over the same 6000 examples
    (1 epoch, batch 10, SGD 0.05) after one warm-up fit, and the ratio;
  * analytic forward+backward FLOPs and the GFLOP/s they imply;
  * peak RSS of this process and of the TFF worker;
  * with --profile_worker, a `perf record` sampling profile of the TFF
    worker over the timed rounds, by shared object, kind of work and symbol.

Runs on `tff_pipeline.runtime.Runtime()`, which owns and stops the worker.
"""

import time

# Before any other import: "time to first round" counts from here.
_SCRIPT_START = time.perf_counter()


def _uptime() -> float | None:
  """Seconds since boot (Linux), to date this process's start exactly."""
  try:
    with open('/proc/uptime', encoding='ascii') as f:
      return float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None


_SCRIPT_START_UPTIME = _uptime()

# pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import dataclasses
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np
import psutil
import tensorflow as tf

from benchmarks import measure
from benchmarks import perf_profile
from benchmarks import report
from benchmarks import workload
from tff_pipeline import models
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline import config as config_lib
from tff_pipeline.models import flops as model_flops
from tff_pipeline.scheduling import policies
from tff_pipeline.scheduling import scheduler as scheduler_lib

_IMPORTS_DONE = time.perf_counter()

_ROUNDS = flags.DEFINE_integer(
    'rounds', 5, 'Timed federated rounds (and Keras fits) after 1 warm-up.',
    lower_bound=1)
_JSON = flags.DEFINE_string('json', '', 'Also write the numbers here.')
_MAX_CONCURRENT = flags.DEFINE_integer(
    'max_concurrent_computation_calls', -1,
    'Passed to the local TFF worker; -1 is no limit (the pipeline default).')
_WORKER_ENV = flags.DEFINE_list(
    'worker_env', [],
    'KEY=VALUE environment variables for the TFF worker only, e.g. '
    'TF_NUM_INTRAOP_THREADS=2 (experiments; the default is none, and the '
    'worker then gets the pipeline\'s thread settings).')
_PROFILE_WORKER = flags.DEFINE_bool(
    'profile_worker', False,
    'Sample the TFF worker with Linux `perf record` during the timed rounds '
    'and print where its CPU time goes (needs perf and root or '
    'perf_event_paranoid <= 1).')
_SKIP_KERAS = flags.DEFINE_bool('skip_keras', False,
                                'Skip the centralized Keras comparison.')
_MATMUL_SIZE = flags.DEFINE_integer(
    'matmul_size', 2048,
    'Side of the float32 matmul timed in this process as a compute ceiling '
    'reference; 0 skips it.', lower_bound=0)

# The fixed workload.
_NUM_CLIENTS = 100
_CLIENTS_PER_ROUND = 10
_BATCH_SIZE = 10
_EPOCHS = 1
_CLIENT_LR = 0.05
_SERVER_LR = 1.0
_SEED = 0
_TASK_STATEMENT_GFLOP = 440.0  # "about 440 GFLOP for 6000 examples"


def _keras_fit(x: np.ndarray, y: np.ndarray, repetitions: int
               ) -> dict[str, Any]:
  """Warm-up fit, then `repetitions` timed fits of one epoch each."""
  model = models.build_cnn(_SEED)
  model.compile(
      optimizer=tf.keras.optimizers.SGD(learning_rate=_CLIENT_LR),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      # The federated client work reports the same metric.
      metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')],
  )

  def fit() -> float:
    history = model.fit(x, y, batch_size=_BATCH_SIZE, epochs=_EPOCHS,
                        shuffle=True, verbose=0)
    return float(history.history['loss'][-1])

  pids = {'python': os.getpid()}
  with measure.CpuMeter(pids) as warm_cpu:
    start = time.perf_counter()
    fit()
    warmup = time.perf_counter() - start
  times, cpu, losses = [], [], []
  for _ in range(repetitions):
    with measure.CpuMeter(pids) as meter:
      start = time.perf_counter()
      losses.append(fit())
      times.append(time.perf_counter() - start)
    cpu.append(meter.seconds)
  return {
      'examples': int(len(y)),
      'warmup_fit_seconds': warmup,
      'warmup_cpu_seconds': dict(warm_cpu.seconds),
      'fit_seconds_median': report.median(times),
      'fit_seconds_all': times,
      'cpu_seconds_per_fit_median': {
          k: report.median([c[k] for c in cpu]) for k in cpu[0]},
      'loss_by_fit': losses,
  }


def _matmul_reference(n: int, repetitions: int = 10) -> dict[str, Any]:
  """GFLOP/s of an n x n float32 matmul in this process (a CPU ceiling)."""
  rng = np.random.default_rng(0)
  a = tf.constant(rng.standard_normal((n, n), dtype=np.float32))
  b = tf.constant(rng.standard_normal((n, n), dtype=np.float32))
  matmul = tf.function(tf.linalg.matmul)
  matmul(a, b).numpy()  # Warm-up and tracing.
  times = []
  for _ in range(repetitions):
    start = time.perf_counter()
    matmul(a, b).numpy()
    times.append(time.perf_counter() - start)
  best = min(times)
  return {'n': n, 'best_seconds': best, 'median_seconds': report.median(times),
          'best_gflops_per_second': 2 * n**3 / best / 1e9,
          'median_gflops_per_second':
              2 * n**3 / report.median(times) / 1e9}


def _progress(record: workload.RoundRecord, warmup: bool) -> None:
  """One line per round on stderr (also lets a profiler attach after the
  warm-up round)."""
  print(f'round {record.round_num}{" (warm-up)" if warmup else ""}: '
        f'{record.seconds:.3f} s', file=sys.stderr, flush=True)


def _plan_seconds_by_policy(task: tasks.Task,
                            config: config_lib.TrainingConfig
                            ) -> dict[str, float]:
  """Median seconds of the scheduler's `sample` + `plan` under each round
  policy, over 20 rounds of the workload's clients (deadline policies: the
  0.8 quantile)."""
  seconds = {}
  for name in policies.ROUND_POLICIES:
    quantile = 0.8 if name in config_lib.DEADLINE_POLICIES else 0.0
    scheduler = scheduler_lib.Scheduler(task, dataclasses.replace(
        config, scheduling=config_lib.SchedulingConfig(
            round_policy=name, deadline_quantile=quantile)))
    times = []
    for round_num in range(1, 21):
      start = time.perf_counter()
      scheduler.plan(round_num, scheduler.sample(round_num,
                                                 config.clients_per_round))
      times.append(time.perf_counter() - start)
    seconds[name] = report.median(times)
  return seconds


def _federated(task: tasks.Task) -> dict[str, Any]:
  """Setup, the warm-up (first) round, then the timed rounds."""
  config = workload.training_config(
      clients_per_round=_CLIENTS_PER_ROUND, client_learning_rate=_CLIENT_LR,
      server_learning_rate=_SERVER_LR, client_batch_size=_BATCH_SIZE,
      client_epochs_per_round=_EPOCHS, seed=_SEED)
  config.validate(num_clients=len(task.train_data.client_ids))
  setup: dict[str, float] = {}
  env = measure.parse_env_assignments(_WORKER_ENV.value)
  with measure.MemorySampler() as memory:
    memory.watch('python', os.getpid())
    start = time.perf_counter()
    with measure.environment_overrides(env):
      runtime = runtime_lib.Runtime(
          max_concurrent_computation_calls=_MAX_CONCURRENT.value)
    setup['worker_start'] = time.perf_counter() - start
    with runtime:
      worker_pid = runtime.local_worker.pid
      rounds = workload.FederatedRounds.start(task, config, runtime,
                                              memory, setup)
      first = rounds.run_round(1)
      first_round_end = time.perf_counter()
      _progress(first, warmup=True)
      timed = []
      profile = perf_profile.PerfProfile(worker_pid)
      with (profile if _PROFILE_WORKER.value else contextlib.nullcontext()):
        for round_num in range(2, _ROUNDS.value + 2):
          timed.append(rounds.run_round(round_num))
          _progress(timed[-1], warmup=False)
      memory.sample()
      worker_peak = measure.peak_rss_bytes(worker_pid)
      worker_threads = psutil.Process(worker_pid).num_threads()
      python_rss_after_rounds = measure.rss_bytes(os.getpid())
  return {
      'config': {'clients_per_round': config.clients_per_round,
                 'client_epochs_per_round': config.client_epochs_per_round,
                 'client_batch_size': config.client_batch_size,
                 'client_learning_rate': _CLIENT_LR,
                 'server_learning_rate': _SERVER_LR,
                 'max_concurrent_computation_calls': _MAX_CONCURRENT.value,
                 'worker_env': env,
                 'worker_threads': runtime.local_worker.threads},
      'setup_seconds': setup,
      'first_round': {'seconds': first.seconds,
                      'inputs_seconds': first.inputs_seconds,
                      'next_seconds': first.next_seconds,
                      'cpu_seconds': first.cpu_seconds,
                      'client_ids': first.client_ids,
                      'num_examples': first.num_examples},
      'first_round_end': first_round_end,
      'timed': workload.round_summary(timed),
      'plan_seconds_by_policy': _plan_seconds_by_policy(task, config),
      'worker_pid': worker_pid,
      'worker_threads': worker_threads,
      'worker_peak_rss_bytes': worker_peak,
      'worker_sampled_peak_rss_bytes': memory.peaks.get('worker'),
      'python_rss_after_rounds_bytes': python_rss_after_rounds,
      'python_peak_rss_after_rounds_bytes': measure.self_peak_rss_bytes(),
      'worker_profile': (
          {'error': profile.error, **profile.summary}
          if _PROFILE_WORKER.value else None),
  }


def _rate(flop: float, seconds: float) -> float:
  return flop / seconds / 1e9


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  facts = report.environment_facts()
  foreign_before = measure.foreign_worker_pids()
  interpreter_startup = measure.interpreter_startup_seconds(
      _SCRIPT_START_UPTIME)

  start = time.perf_counter()
  task = tasks.build_mnist_task(tasks.MnistTaskSpec(
      model='cnn', partition='iid', num_clients=_NUM_CLIENTS, seed=_SEED))
  data_seconds = time.perf_counter() - start

  fed = _federated(task)
  setup = {
      'imports': _IMPORTS_DONE - _SCRIPT_START,
      'flags_and_facts': start - _IMPORTS_DONE,
      'data_and_task': data_seconds,
      **fed['setup_seconds'],
      'first_round': fed['first_round']['seconds'],
  }
  time_to_first_round = fed['first_round_end'] - _SCRIPT_START

  keras = None
  if not _SKIP_KERAS.value:
    arrays = [task.train_data.client_arrays(c)
              for c in fed['first_round']['client_ids']]
    x = np.concatenate([a['x'] for a in arrays])
    y = np.concatenate([a['y'] for a in arrays])
    keras = _keras_fit(x, y, _ROUNDS.value)

  matmul = (_matmul_reference(_MATMUL_SIZE.value)
            if _MATMUL_SIZE.value else None)
  flops = model_flops.train_flops(models.build_cnn(_SEED))
  timed = fed['timed']
  examples = timed['examples_per_round_median']
  round_gflop = flops['train_per_example'] * examples / 1e9
  round_s = timed['round_seconds_median']
  next_s = timed['next_seconds_median']
  cpu = timed['cpu_seconds_per_round_median']
  cores = os.cpu_count() or 1
  result: dict[str, Any] = {
      'workload': {
          'model': 'cnn', 'partition': 'iid', 'num_clients': _NUM_CLIENTS,
          'examples_per_round': examples, **fed['config'],
          'model_parameters': task.facts['model_parameters']},
      'environment': facts,
      'foreign_tff_workers_at_start': foreign_before,
      'foreign_tff_workers_at_end': measure.foreign_worker_pids(),
      'loadavg_at_end': list(os.getloadavg()),
      'interpreter_startup_seconds': interpreter_startup,
      'setup_seconds': setup,
      'time_to_first_round_seconds': time_to_first_round,
      'time_to_first_round_incl_interpreter_seconds': (
          None if interpreter_startup is None
          else time_to_first_round + interpreter_startup),
      'first_round': fed['first_round'],
      'federated': timed,
      'keras': keras,
      'ratio_schedule_over_round': (
          timed['schedule_seconds_median'] / timed['round_seconds_median']),
      'plan_seconds_by_policy': fed['plan_seconds_by_policy'],
      'ratio_plan_over_round_by_policy': {
          name: seconds / timed['round_seconds_median']
          for name, seconds in fed['plan_seconds_by_policy'].items()},
      'ratio_round_over_keras_fit': (
          round_s / keras['fit_seconds_median'] if keras else None),
      'flops': flops,
      'train_gflop_per_round': round_gflop,
      'task_statement_gflop': _TASK_STATEMENT_GFLOP,
      'round_gflops_per_second': _rate(round_gflop * 1e9, round_s),
      'next_gflops_per_second': _rate(round_gflop * 1e9, next_s),
      'matmul_reference': matmul,
      'worker_cpu_seconds_per_example': cpu['worker'] / examples,
      'keras_cpu_seconds_per_example': (
          keras['cpu_seconds_per_fit_median']['python'] / keras['examples']
          if keras else None),
      'keras_gflops_per_second': (
          _rate(flops['train_per_example'] * keras['examples'],
                keras['fit_seconds_median']) if keras else None),
      'worker_threads': fed['worker_threads'],
      'worker_profile': fed['worker_profile'],
      'memory': {
          'python_peak_rss_bytes': measure.self_peak_rss_bytes(),
          'python_peak_rss_after_rounds_bytes':
              fed['python_peak_rss_after_rounds_bytes'],
          'python_rss_after_rounds_bytes':
              fed['python_rss_after_rounds_bytes'],
          'worker_peak_rss_bytes': fed['worker_peak_rss_bytes'],
          'worker_sampled_peak_rss_bytes':
              fed['worker_sampled_peak_rss_bytes'],
      },
  }
  _print(result, cores)
  leaked = runtime_lib.live_worker_pids()
  print(f'\nTFF workers of this process still running: {leaked or "none"}')
  if _JSON.value:
    report.write_json(_JSON.value, result)
    print(f'\nwrote {_JSON.value}')


def _print(r: dict[str, Any], cores: int) -> None:
  env = r['environment']
  fed = r['federated']
  cpu = fed['cpu_seconds_per_round_median']
  keras = r['keras']
  flops = r['flops']
  s = report.fmt_seconds
  w = r['workload']
  report.print_table('Environment', [
      ('date (UTC)', env['date_utc']),
      ('TensorFlow / TFF', f"{env['tensorflow']} / "
                           f"{env['tensorflow_federated']}"),
      ('Python', env['python']),
      ('library (git HEAD, changed tff_pipeline files)',
       f"{env['git_head']}, {env['tff_pipeline_changed_files']}"),
      ('os.cpu_count()', str(env['os_cpu_count'])),
      ('load average at start (1/5/15 min)',
       ' '.join(f'{v:.2f}' for v in env['loadavg_1_5_15'])),
      ('load average at end', ' '.join(f'{v:.2f}' for v in r['loadavg_at_end'])),
      ('other TFF workers at start / end',
       f"{len(r['foreign_tff_workers_at_start'])} / "
       f"{len(r['foreign_tff_workers_at_end'])}"),
      ('workload', f"cnn ({w['model_parameters']:,} params), "
                   f"{w['clients_per_round']} of {w['num_clients']} IID "
                   f"clients, {w['examples_per_round']:.0f} examples/round, "
                   f"E={w['client_epochs_per_round']}, "
                   f"B={w['client_batch_size']}, "
                   f"lr {w['client_learning_rate']}/"
                   f"{w['server_learning_rate']}"),
      ('worker settings', f"max_concurrent_computation_calls="
                          f"{w['max_concurrent_computation_calls']}, "
                          + ', '.join(f'{k}={v}' for k, v in
                                      w['worker_threads'].items())
                          + (f", env {w['worker_env']}"
                             if w['worker_env'] else '')),
  ])
  st = r['setup_seconds']
  report.print_table('Time to first round', [
      ('process start (exec) -> script top',
       s(r['interpreter_startup_seconds'])),
      ('imports (TF, TFF, pipeline)', s(st['imports'])),
      ('flags, environment facts', s(st['flags_and_facts'])),
      ('load MNIST, partition, build task', s(st['data_and_task'])),
      ('start TFF worker (Runtime())', s(st['worker_start'])),
      ('build learning process', s(st['build_process'])),
      ('process.initialize()', s(st['initialize'])),
      ('first round (loop.run_round)', s(st['first_round'])),
      ('   of which client_inputs', s(r['first_round']['inputs_seconds'])),
      ('   of which process.next', s(r['first_round']['next_seconds'])),
      ('', ''),
      ('TIME TO FIRST ROUND (from script top)',
       s(r['time_to_first_round_seconds'])),
      ('   including interpreter start',
       s(r['time_to_first_round_incl_interpreter_seconds'])),
  ])
  rows = [
      ('timed rounds (after 1 warm-up)', str(fed['rounds'])),
      ('ROUND, median', s(fed['round_seconds_median'])),
      ('   min / max', f"{s(fed['round_seconds_min'])} / "
                      f"{s(fed['round_seconds_max'])}"),
      ('   client_inputs (tf.data build), median',
       s(fed['inputs_seconds_median'])),
      ('   process.next, median', s(fed['next_seconds_median'])),
      ('   scheduler (sample + plan: clock, policy), median',
       f"{s(fed['schedule_seconds_median'])} "
       f"({r['ratio_schedule_over_round']:.2e} of the round)"),
      *[(f'   sample + plan, --round_policy={name}',
         f"{s(r['plan_seconds_by_policy'][name])} "
         f"({ratio:.2e} of the round)")
        for name, ratio in r['ratio_plan_over_round_by_policy'].items()],
      ('CPU s/round: this process (all threads)', f"{cpu['python']:.2f}"),
      ('CPU s/round: TFF worker', f"{cpu['worker']:.2f}"),
      ('CPU s/round: rest of the machine', f"{cpu['others']:.2f}"),
      ('CPU s/round: stolen by the hypervisor', f"{cpu['steal']:.2f}"),
      ('TFF worker threads (after the rounds)', str(r['worker_threads'])),
      ('worker busy = worker CPU / (wall x cores)',
       f"{cpu['worker'] / (cpu['wall'] * cores):.0%} of {cores} cores"),
  ]
  if keras:
    kc = keras['cpu_seconds_per_fit_median']
    rows += [
        ('', ''),
        ('KERAS fit, 1 epoch, median', s(keras['fit_seconds_median'])),
        ('   warm-up fit (includes tracing)', s(keras['warmup_fit_seconds'])),
        ('   CPU s/fit: this process', f"{kc['python']:.2f}"),
        ('   CPU s/fit: rest of the machine', f"{kc['others']:.2f}"),
        ('RATIO federated round / Keras fit',
         f"{r['ratio_round_over_keras_fit']:.2f}x"),
    ]
  report.print_table('Federated round vs. centralized Keras', rows)
  layer_rows = [(f"  {l['kind']}",
                 f"{l['macs_flops'] / 1e6:9.3f} MFLOP (+{l['bias_flops']:,} "
                 'bias)') for l in flops['layers']]
  gflop = r['train_gflop_per_round']
  check = abs(gflop - r['task_statement_gflop']) / r['task_statement_gflop']
  report.print_table('FLOPs (analytic)', [
      ('convention', flops['convention']),
      *layer_rows,
      ('forward / example', f"{flops['forward_per_example'] / 1e6:.3f} MFLOP "
                            f"({flops['forward_per_example_with_bias'] / 1e6:.3f}"
                            ' with bias adds)'),
      ('forward+backward / example',
       f"{flops['train_per_example'] / 1e6:.3f} MFLOP"),
      ('forward+backward / round', f'{gflop:.1f} GFLOP'),
      ('task statement says', f"~{r['task_statement_gflop']:.0f} GFLOP: "
       + ('agrees' if check < 0.02 else 'DISAGREES')
       + f' ({check:.1%} apart)'),
      ('', ''),
      ('EFFECTIVE GFLOP/s, whole round', f"{r['round_gflops_per_second']:.2f}"),
      ('   process.next only', f"{r['next_gflops_per_second']:.2f}"),
      ('   Keras fit', f"{r['keras_gflops_per_second']:.2f}"
       if keras else 'skipped'),
      ('GFLOP per CPU-second: TFF worker in a round',
       f"{flops['train_per_example'] / r['worker_cpu_seconds_per_example'] / 1e9:.2f}"),
      ('GFLOP per CPU-second: Keras fit',
       f"{flops['train_per_example'] / r['keras_cpu_seconds_per_example'] / 1e9:.2f}"
       if keras else 'skipped'),
      *([(f"reference: {r['matmul_reference']['n']}^2 float32 matmul, "
          'best / median',
          f"{r['matmul_reference']['best_gflops_per_second']:.1f} / "
          f"{r['matmul_reference']['median_gflops_per_second']:.1f}")]
        if r['matmul_reference'] else []),
  ])
  m = r['memory']
  report.print_table('Memory', [
      ('this process: peak RSS (getrusage), whole run',
       report.fmt_mib(m['python_peak_rss_bytes'])),
      ('this process: peak RSS before the Keras part',
       report.fmt_mib(m['python_peak_rss_after_rounds_bytes'])),
      ('this process: RSS after the rounds',
       report.fmt_mib(m['python_rss_after_rounds_bytes'])),
      ('TFF worker: peak RSS (VmHWM)',
       report.fmt_mib(m['worker_peak_rss_bytes'])),
      ('TFF worker: peak of 50 ms samples',
       report.fmt_mib(m['worker_sampled_peak_rss_bytes'])),
  ])
  profile = r['worker_profile']
  if profile is not None:
    if profile.get('error'):
      print(f"\nworker profile: not taken ({profile['error']})")
    else:
      pct = lambda v: f'{v:5.1f}%'
      report.print_table(
          'Where the TFF worker\'s CPU goes (perf, timed rounds)',
          [(k, pct(v)) for k, v in profile['by_shared_object'].items()]
          + [('', '')]
          + [(k, pct(v)) for k, v in profile['by_kind_of_work'].items()])
      report.print_table('Top symbols', [
          (f"{t['symbol'][:90]} ({t['dso']})", pct(t['percent']))
          for t in profile['top_symbols']])
  losses = fed['train_loss_by_round']
  print('\nclient training loss by timed round (sanity): '
        + ', '.join('n/a' if v is None else f'{v:.4f}' for v in losses))
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
