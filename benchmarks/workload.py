"""What the benchmarks run and count, with TensorFlow: federated rounds
timed through the training loop's own `loop.run_round` (the analytic FLOPs
of a Keras model are in `tff_pipeline/models/flops.py`)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import measure
from benchmarks import report
from tff_pipeline import algorithms
from tff_pipeline import config as config_lib
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.scheduling import scheduler as scheduler_lib
from tff_pipeline.scheduling import selecting
from tff_pipeline.training import loop


def training_config(
    *,
    clients_per_round: int,
    client_learning_rate: float,
    server_learning_rate: float,
    client_batch_size: int = 10,
    client_epochs_per_round: int = 1,
    seed: int = 0,
) -> config_lib.TrainingConfig:
  """A `TrainingConfig` for FedAvg with client and server SGD.

  Nothing is written: the benchmarks never call `loop.prepare_outputs`, so
  `root_output_dir` is only a placeholder the config requires.
  """
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
    num_steps: Local steps (batches) of all the clients, as the round's
      `compute/mean_local_steps` reports them: E * ceil(n_i / B) each
      without simulated heterogeneity.
    inputs_seconds: Sampling, planning and `loop.client_inputs` (tf.data
      construction).
    schedule_seconds: Sampling and planning alone (the scheduler's share:
      devices, the simulated clock and the round policy).
    next_seconds: `process.next` (serialization, gRPC, worker compute,
      deserialization) plus reading the new global weights.
    seconds: The whole `loop.run_round`: the above, flattening the metrics
      and checking that the new model is finite.
    cpu_seconds: CPU seconds during the round: 'python' (this process, all
      threads), 'worker', 'others' (the rest of the machine), and 'wall'.
    train_loss: The clients' mean training loss reported by TFF, if any.
  """

  round_num: int
  client_ids: list[str]
  num_examples: int
  num_steps: int
  inputs_seconds: float
  schedule_seconds: float
  next_seconds: float
  seconds: float
  cpu_seconds: dict[str, float]
  train_loss: float | None


class FederatedRounds:
  """Runs rounds of a task's learning process with `loop.run_round`.

  Args:
    task: The task.
    config: The training configuration.
    algorithm: Built by `loop.build_algorithm(task, config)`.
    worker_pid: PID of the TFF worker, for CPU accounting (None: skipped).
  """

  def __init__(self, task: tasks.Task, config: config_lib.TrainingConfig,
               algorithm: algorithms.Algorithm, worker_pid: int | None):
    self.task = task
    self.config = config
    self.algorithm = algorithm
    self.state: Any = None
    self.scheduler: scheduler_lib.Scheduler = selecting.build(task, config)
    self._pids = {'python': os.getpid()}
    if worker_pid is not None:
      self._pids['worker'] = worker_pid

  @classmethod
  def start(cls, task: tasks.Task, config: config_lib.TrainingConfig,
            runtime: runtime_lib.Runtime, memory: measure.MemorySampler,
            setup: dict[str, float]) -> 'FederatedRounds':
    """Builds the process for `runtime`'s local worker and initializes it.

    Watches the worker's memory and records 'build_process' and
    'initialize' seconds in `setup`.
    """
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
    with measure.CpuMeter(self._pids) as cpu:
      result = loop.run_round(self.task, self.config, self.algorithm,
                              self.state, round_num, self.scheduler)
    self.state = result.state
    clients = len(result.client_ids)
    sizes = [self.task.train_data.num_examples(c) for c in result.client_ids]
    return RoundRecord(
        round_num=round_num, client_ids=result.client_ids,
        num_examples=int(sum(sizes)),
        num_steps=round(result.row['compute/mean_local_steps'] * clients),
        inputs_seconds=result.inputs_seconds,
        schedule_seconds=result.schedule_seconds,
        next_seconds=result.next_seconds, seconds=result.seconds,
        cpu_seconds=dict(cpu.seconds),
        train_loss=result.row.get('client_work/train/loss'))


def round_summary(records: Sequence[RoundRecord]) -> dict[str, Any]:
  """Medians (and extremes) of timed rounds."""
  median = report.median
  seconds = [r.seconds for r in records]
  keys = records[0].cpu_seconds.keys()
  return {
      'rounds': len(records),
      'round_seconds_median': median(seconds),
      'round_seconds_min': min(seconds),
      'round_seconds_max': max(seconds),
      'round_seconds_all': seconds,
      'inputs_seconds_median': median([r.inputs_seconds for r in records]),
      'schedule_seconds_median': median(
          [r.schedule_seconds for r in records]),
      'next_seconds_median': median([r.next_seconds for r in records]),
      'examples_per_round_median': median([r.num_examples for r in records]),
      'steps_per_round_median': median([r.num_steps for r in records]),
      'cpu_seconds_per_round_median': {
          k: median([r.cpu_seconds[k] for r in records]) for k in keys},
      'train_loss_by_round': [r.train_loss for r in records],
  }

