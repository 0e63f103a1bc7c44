"""The one training loop: sample, train a round, evaluate, record, checkpoint.

Every binary and the notebooks call `run_federated`. Each round:

1. Ask the run's `scheduling.scheduler.Scheduler` for the round's clients
   (uniformly without replacement, a pure function of (seed, round), so a
   resumed run samples the same clients) and for its plan: each client's
   local steps, who the round policy drops, and the round's simulated
   duration (docs/simulated_time.md).
2. Build each kept client's dataset, shuffled with a seed derived from
   (seed, round, client).
3. Run the learning process's `next`; stop with a clear error if the new
   global model is not finite (the last good checkpoint stays intact).
   Steps 1 to 3 are one call of `run_round` (the loop raises the error);
   the benchmarks time the same function.
4. Every `rounds_per_eval` rounds (and at the end), evaluate the global
   model centrally.
5. Advance the simulated clock; release the round's metrics to the CSV and
   TensorBoard managers of `tff.program`; save program state (the process's
   and the clock's) every `rounds_per_checkpoint` rounds (and at the end);
   rewrite `summary.json` atomically.

Rerunning the same command resumes from the latest checkpoint. The CSV
manager drops rows at or after the resumed round, so no row is duplicated.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_federated as tff
import tqdm

from tff_pipeline import aggregators
from tff_pipeline import algorithms
from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import faults as faults_lib
from tff_pipeline import privacy
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks as tasks_lib
from tff_pipeline.models import width as width_lib
from tff_pipeline.runtime import lifecycle
from tff_pipeline.scheduling import scheduler as scheduler_lib
from tff_pipeline.scheduling import selecting
from tff_pipeline.scheduling import widths as widths_lib
from tff_pipeline.training import checkpoints as checkpoints_lib
from tff_pipeline.training import memory
from tff_pipeline.training import outputs as outputs_lib
from tff_pipeline.training import plots
from tff_pipeline.training import recorder as recorder_lib

# Separates the shuffling stream from the other streams derived from --seed.
_SHUFFLE_STREAM = 0x5348_5546
# The `extra` checkpoint entry holding the simulated clock.
_SCHEDULER = 'scheduler'


@dataclasses.dataclass
class RunResult:
  """What a run produced.

  Attributes:
    history: One dict per completed round (this run and, after a resume, the
      rounds before it), as written to the metrics CSV.
    final_weights: Trainable weights of the final global model (Keras order).
    summary: The content of `summary.json`.
    paths: Where the outputs are.
  """

  history: list[dict[str, float]]
  final_weights: list[np.ndarray]
  summary: dict[str, Any]
  paths: outputs_lib.OutputPaths


def flatten_metrics(value: Any, prefix: str = '') -> dict[str, float]:
  """Nested metric mappings -> {'a/b/c': float}; non-scalars are skipped."""
  flat: dict[str, float] = {}
  if isinstance(value, Mapping):
    for key, item in value.items():
      flat.update(flatten_metrics(item, f'{prefix}{key}/'))
    return flat
  array = np.asarray(value)
  if array.shape == () and np.issubdtype(array.dtype, np.number):
    flat[prefix.rstrip('/')] = float(array)
  return flat


def shuffle_seed(seed: int, round_num: int, client_index: int) -> int:
  """The shuffle seed of one client in one round."""
  return int(np.random.SeedSequence(
      [seed, _SHUFFLE_STREAM, round_num, client_index]
  ).generate_state(1)[0])


def build_algorithm(
    task: tasks_lib.Task, config: config_lib.TrainingConfig
) -> algorithms.Algorithm:
  """The learning process for `config.algorithm` and `config.aggregator`.

  When clients train width-scaled sub-models (`--model_width_policy`), it is
  HeteroFL's (`algorithms.build.build_width_masked` around the masked mean):
  its `client_input` takes each client's width.
  """
  if config.model_width.enabled:
    return algorithms.build_width_masked(
        task.tff_model_fn(), config, aggregators.build_masked_mean(config),
        widths_lib.task_width_spec(task, config),
        output_scaler=config.model_width.model_width_scaler)
  return algorithms.build_algorithm(
      task.tff_model_fn(), config, aggregators.build_aggregator(config)
  )


def client_inputs(
    task: tasks_lib.Task,
    config: config_lib.TrainingConfig,
    algorithm: algorithms.Algorithm,
    round_num: int,
    client_ids: Sequence[str],
    steps: Sequence[int],
    widths: Sequence[float] | None = None,
) -> tuple[list[Any], dict[str, float]]:
  """The training clients' data for one round, and compute statistics.

  Each client gets one epoch of its data shuffled with a seed derived from
  (seed, round, client), and its budget of local steps from the round's plan
  (`scheduler.ScheduledRound.steps`): E full epochs, or less when the round
  policy or `config.heterogeneity` says so. With `widths` (HeteroFL), each
  client's width goes with its data.
  """
  inputs = []
  fault_codes = config.faults.fault_codes(config.seed, round_num,
                                          len(client_ids))
  width_args = ([()] * len(client_ids) if widths is None
                else [(w,) for w in widths])
  for cid, fault, budget, width in zip(client_ids, fault_codes, steps,
                                       width_args):
    index = task.train_data.client_index(cid)
    epoch = task.client_epoch(
        cid, batch_size=config.client_batch_size,
        shuffle_seed=shuffle_seed(config.seed, round_num, index))
    num_examples = task.train_data.num_examples(cid)
    if fault == faults_lib.ZERO_EXAMPLES:
      epoch, num_examples = epoch.take(0), 0
    inputs.append(algorithm.client_input(epoch, budget, num_examples, fault,
                                         *width))
  stats = {
      'compute/mean_local_steps': float(np.mean(steps)),
      'compute/min_local_steps': float(np.min(steps)),
      'compute/max_local_steps': float(np.max(steps)),
  }
  if config.faults.enabled:
    stats['faults/num_faulty'] = float(faults_lib.count_faulty(fault_codes))
  return inputs, stats


def _is_finite(weights: Sequence[np.ndarray]) -> bool:
  return all(np.all(np.isfinite(w)) for w in weights)


@dataclasses.dataclass
class RoundResult:
  """One round, as `run_round` ran it.

  Attributes:
    client_ids: The clients that trained, in sampling order.
    scheduled: The round's plan (candidates, steps, simulated seconds).
    state: The learning process's state after the round.
    weights: Trainable weights of the new global model (Keras order).
    row: The process's metrics, flattened (`flatten_metrics`), then the
      clients' compute statistics (`client_inputs`) and the round's
      simulated time (`scheduler.ScheduledRound.stats`).
    finite: Whether the new global model is finite and the finalizer applied
      the update (TFF's finalizer refuses a non-finite aggregate and keeps
      the old model; either way the round failed).
    inputs_seconds: Sampling, planning and building the client datasets.
    schedule_seconds: Sampling and planning (the scheduler's share).
    next_seconds: `process.next` and reading the new global weights.
    seconds: The whole round, from sampling to the finiteness check.
  """

  client_ids: list[str]
  scheduled: scheduler_lib.ScheduledRound
  state: Any
  weights: list[np.ndarray]
  row: dict[str, float]
  finite: bool
  inputs_seconds: float
  schedule_seconds: float
  next_seconds: float
  seconds: float


def run_round(
    task: tasks_lib.Task,
    config: config_lib.TrainingConfig,
    algorithm: algorithms.Algorithm,
    state: Any,
    round_num: int,
    scheduler: scheduler_lib.Scheduler | None = None,
) -> RoundResult:
  """Runs round `round_num` of training from `state`.

  Asks `scheduler` for the round's clients and plan (`Scheduler.sample`,
  `Scheduler.plan`), builds the kept clients' data (`client_inputs`), runs
  `algorithm.process.next` and reads the new global model. The scheduler's
  clock is not advanced here (`Scheduler.finish_round`). `run_federated` runs every round with this function, and
  the benchmarks time it, so they time what training runs.

  Args:
    task: Model, client data and evaluation.
    config: Sampling, local work and seed of the run.
    algorithm: The learning process for `task` and `config`.
    state: The process's state before the round.
    round_num: 1-based; sampling and shuffling depend on it.
    scheduler: The run's scheduler; one is built for `task` and `config`
      when None (runs and benchmarks build it once).

  Returns:
    A `RoundResult`; the caller decides what a non-finite round means.
  """
  if scheduler is None:
    scheduler = selecting.build(task, config)
  start = time.perf_counter()
  scheduled = scheduler.plan(round_num, scheduler.sample(
      round_num, config.clients_per_round,
      list(state.global_model_weights.trainable)))
  planned = time.perf_counter()
  client_ids = scheduled.client_ids
  inputs, compute_stats = client_inputs(task, config, algorithm, round_num,
                                        client_ids, scheduled.steps,
                                        scheduled.widths)
  built = time.perf_counter()
  output = algorithm.process.next(state, inputs)
  weights = list(output.state.global_model_weights.trainable)
  fetched = time.perf_counter()
  row = flatten_metrics(output.metrics)
  finite = (_is_finite(weights)
            and not row.get('finalizer/update_non_finite', 0) > 0)
  row.update(compute_stats)
  row.update(scheduled.stats())
  return RoundResult(
      client_ids=client_ids, scheduled=scheduled, state=output.state,
      weights=weights, row=row, finite=finite, inputs_seconds=built - start,
      schedule_seconds=planned - start, next_seconds=fetched - built,
      seconds=time.perf_counter() - start)


def prepare_outputs(
    config: config_lib.TrainingConfig,
) -> outputs_lib.OutputPaths:
  """Creates the run's output directories, or fails with `OutputError`.

  Binaries call it before loading data, so an unwritable directory is
  reported at once.
  """
  return outputs_lib.OutputPaths(
      config.root_output_dir, config.experiment_name
  ).create()


def run_federated(
    task: tasks_lib.Task,
    config: config_lib.TrainingConfig,
    *,
    hparams: Mapping[str, Any] | None = None,
    algorithm: algorithms.Algorithm | None = None,
    runtime: runtime_lib.Runtime | None = None,
    workers: Sequence[str] = (),
    worker_connect_timeout: float = 30.0,
    worker_tls: runtime_lib.ClientTls | None = None,
    allow_flag_changes: bool = False,
    progress: bool = True,
    on_round_end: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
  """Trains `task` federatedly as `config` says; resumes if it can.

  Args:
    task: Model, client data and evaluation.
    config: Rounds, sampling, optimizers, algorithm, aggregator, seed.
    hparams: The flags of the run, written to `hparams.csv` and compared on
      resume. Defaults to the fields of `config`.
    algorithm: A prebuilt algorithm for this task and config (tests reuse
      one); built here when None.
    runtime: Execution runtime to use; when None, one is made for `workers`
      (and closed at the end).
    workers: `host:port` of remote TFF workers to run the clients on, split
      across them each round; empty means a local worker started here.
    worker_connect_timeout: Seconds to wait for a worker to be reachable.
    worker_tls: Mutual-TLS credentials for `workers`; None is plaintext.
    allow_flag_changes: Resume even if `hparams` differ from the checkpoint's.
    progress: Show a progress bar on stderr.
    on_round_end: Called with (round_num, metrics row) after each round.

  Returns:
    A `RunResult`.

  Raises:
    errors.PipelineError: for bad configuration, unwritable outputs,
      unusable checkpoints, a non-finite model or an interruption.
  """
  config.check_num_clients(len(task.train_data.client_ids))
  # Built first: it reads --device_file and resolves the policy, so bad
  # simulated-time input fails before a worker starts.
  scheduler = selecting.build(task, config)
  hparams = dict(hparams) if hparams is not None else config.hparams()
  paths = prepare_outputs(config)
  checkpoints = checkpoints_lib.CheckpointManager(paths.checkpoint_dir)
  checkpoints.check_run_config(hparams, allow_flag_changes)
  outputs_lib.atomic_write_csv_row(paths.hparams_csv, hparams)

  own_runtime = runtime is None
  with lifecycle.raise_on_termination_signals():
    if own_runtime:
      runtime = runtime_lib.Runtime(
          workers, worker_log=paths.worker_log,
          connect_timeout=worker_connect_timeout, tls=worker_tls)
    try:
      with runtime.installed():
        return _train(task, config, paths, checkpoints, algorithm, scheduler,
                      progress, on_round_end,
                      memory.probe(lambda: runtime.local_worker_pids))
    finally:
      if own_runtime:
        runtime.close()


def _train(
    task: tasks_lib.Task,
    config: config_lib.TrainingConfig,
    paths: outputs_lib.OutputPaths,
    checkpoints: checkpoints_lib.CheckpointManager,
    algorithm: algorithms.Algorithm | None,
    scheduler: scheduler_lib.Scheduler,
    progress: bool,
    on_round_end: Callable[[int, dict[str, float]], None] | None,
    memory_probe: Callable[[], dict[str, float]],
) -> RunResult:
  setup_start = time.perf_counter()
  if algorithm is None:
    algorithm = build_algorithm(task, config)
  initial_state = algorithm.process.initialize()
  restored = checkpoints.restore(
      initial_state, extra_structure={_SCHEDULER: scheduler.state()})
  state, start_round = restored.process_state, restored.round_num
  if state is None:
    state = initial_state
  else:
    scheduler.restore(restored.extra[_SCHEDULER])
  recorder = recorder_lib.Recorder(paths, start_round)
  setup_seconds = time.perf_counter() - setup_start

  weights = list(state.global_model_weights.trainable)
  per_client = scheduler.payload
  privacy_facts, epsilons = _privacy_accounting(
      config, len(task.train_data.client_ids))
  run_facts = {
      'experiment_name': config.experiment_name,
      'task': task.name,
      'algorithm': config.algorithm,
      'aggregator': config.aggregator,
      'total_rounds': config.total_rounds,
      'clients_per_round': config.clients_per_round,
      'seed': config.seed,
      'resumed_from_round': start_round,
      'setup_seconds': setup_seconds,
      'task_facts': dict(task.facts),
      'tensorflow_federated_version': tff.__version__,
      'python_version': sys.version.split()[0],
      'results_dir': paths.results_dir,
      'round_policy': config.scheduling.round_policy,
      'device_profile': config.scheduling.device_profile,
      'train_flops_per_example': scheduler.flops_per_example,
      'bytes_broadcast_per_client': per_client.broadcast_bytes,
      'bytes_uploaded_per_client': per_client.upload_bytes,
      'upload_bits_per_value': per_client.upload_bits_per_value,
      **privacy_facts,
  }
  if scheduler.width_costs is not None:
    run_facts['model_width_policy'] = (
        config.model_width.model_width_policy)
    run_facts['model_width_scaler'] = config.model_width.model_width_scaler
    run_facts['model_widths'] = scheduler.width_costs.facts()

  def write_summary(status: str, round_num: int) -> dict[str, Any]:
    history = recorder.history
    summary = {
        **run_facts,
        'status': status,
        'rounds_completed': round_num,
        'round_seconds': [row.get('round_seconds') for row in history],
        **recorder_lib.eval_history(history),
        **task.summary_extras(weights),
        **recorder_lib.simulated_time_summary(
            history, scheduler.elapsed_seconds,
            config.scheduling.target_accuracy),
    }
    if history:
      summary['final_metrics'] = dict(history[-1])
    if epsilons and round_num > 0:
      summary['dp_epsilon'] = epsilons[round_num - 1]
    outputs_lib.atomic_write_json(paths.summary_json, summary)
    return summary

  last_saved = start_round
  bar = tqdm.tqdm(
      total=config.total_rounds, initial=start_round, unit='round',
      desc=config.experiment_name, file=sys.stderr, disable=not progress,
      dynamic_ncols=True,
  )
  status = 'failed'
  try:
    for round_num in range(start_round + 1, config.total_rounds + 1):
      round_start = time.perf_counter()
      result = run_round(task, config, algorithm, state, round_num,
                         scheduler)
      if not result.finite:
        raise _non_finite_error(round_num, last_saved)
      state, weights, row = result.state, result.weights, result.row
      row.update(scheduler.finish_round(round_num, result.scheduled, row,
                                        weights))
      (row['communication/bytes_broadcast'],
       row['communication/bytes_uploaded']) = scheduler.round_bytes(
           result.scheduled)
      if epsilons:
        row['privacy/epsilon'] = epsilons[round_num - 1]
      row['round_seconds'] = time.perf_counter() - round_start
      if (round_num % config.rounds_per_eval == 0
          or round_num == config.total_rounds):
        for name, value in task.evaluate(weights).items():
          row[f'eval/{name}'] = value
        row.update(_sub_model_evaluation(task, scheduler, weights))
      row.update(memory_probe())
      recorder.release(round_num, row)
      if (round_num % config.rounds_per_checkpoint == 0
          or round_num == config.total_rounds):
        checkpoints.save(state, round_num, {_SCHEDULER: scheduler.state()})
        last_saved = round_num
      write_summary('running', round_num)
      if on_round_end is not None:
        on_round_end(round_num, row)
      bar.set_postfix(_postfix(row, task.key_metric), refresh=False)
      bar.update(1)
    status = 'completed'
  except errors.RuntimeUnavailableError as e:
    raise errors.RuntimeUnavailableError(
        f'{e}. Rounds 1..{recorder.last_round} finished; the latest '
        f'checkpoint is round {last_saved}. Restart the worker and run the '
        'same command again to resume.') from None
  except errors.Interrupted as e:
    status = 'interrupted'
    if recorder.last_round > last_saved:
      checkpoints.save(state, recorder.last_round,
                       {_SCHEDULER: scheduler.state()})
      last_saved = recorder.last_round
    raise errors.Interrupted(
        f'{e}; rounds 1..{recorder.last_round} are saved (checkpoint round '
        f'{last_saved}). Run the same command again to resume.'
    ) from None
  finally:
    bar.close()
    summary = write_summary(status, recorder.last_round)
    if recorder.history:
      plots.plot_history(recorder.history, paths.result, config.experiment_name)
  outputs_lib.atomic_save_npz(paths.weights_npz, weights)
  return RunResult(recorder.history, weights, summary, paths)


def _sub_model_evaluation(
    task: tasks_lib.Task, scheduler: scheduler_lib.Scheduler,
    weights: Sequence[np.ndarray]) -> dict[str, float]:
  """`eval_width/<w>/<metric>`: each narrower width's sub-model, cut from
  the global model (`width.extract`) and evaluated as the global model is
  (HeteroFL reports every width's accuracy); with the scaler, as it trains
  (`width.scaled`). Empty without sub-models."""
  if scheduler.width_costs is None:
    return {}
  row = {}
  spec = scheduler.width_spec
  for w in scheduler.width_costs.widths:
    if w == width_lib.FULL_WIDTH:
      continue
    sub = width_lib.extract(weights, spec, w)
    if scheduler.config.model_width.model_width_scaler:
      sub = width_lib.scaled(sub, spec, w)
    for name, value in task.evaluate_at_width(sub, w).items():
      row[f'eval_width/{widths_lib.label(w)}/{name}'] = value
  return row


def _non_finite_error(round_num: int, last_saved: int) -> errors.TrainingError:
  """The error that stops a run whose round `round_num` was not finite."""
  kept = (f'the last good checkpoint (round {last_saved}) is intact'
          if last_saved else 'no checkpoint had been written yet')
  return errors.TrainingError(
      f'round {round_num} produced a non-finite model update (NaN or '
      f'inf); stopped, {kept}. Lower the learning rates, or use a '
      'robust option (--aggregator=median|trimmed_mean|compensated, '
      '--clip_norm, --zeroing)'
  )


def _privacy_accounting(
    config: config_lib.TrainingConfig, num_clients: int
) -> tuple[dict[str, float], list[float]]:
  """(summary facts, epsilon after each round) of a DP run; empty otherwise."""
  agg = config.aggregation
  if not agg.dp:
    return {}, []
  delta = agg.dp_delta or privacy.default_delta(num_clients)
  rate = config.clients_per_round / num_clients
  epsilons = privacy.dp_epsilon_by_round(
      agg.dp_noise_multiplier, rate, config.total_rounds, delta)
  facts = {
      'dp_noise_multiplier': agg.dp_noise_multiplier,
      'dp_clip_norm': agg.dp_clip_norm,
      'dp_adaptive_clipping': agg.dp_adaptive_clipping,
      'dp_sampling_rate': rate,
      'dp_delta': delta,
      'dp_epsilon_at_total_rounds': epsilons[-1],
      'dp_accountant': 'RDP (dp_accounting), Poisson-subsampled Gaussian',
  }
  return facts, epsilons


def _postfix(row: Mapping[str, float], key_metric: str) -> dict[str, str]:
  postfix = {}
  if f'eval/{key_metric}' in row:
    postfix[key_metric] = f'{row[f"eval/{key_metric}"]:.4g}'
  if 'client_work/train/loss' in row:
    postfix['train_loss'] = f'{row["client_work/train/loss"]:.4g}'
  return postfix
