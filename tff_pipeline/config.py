"""Typed experiment configuration, built from flags or by hand (notebooks).

Each dataclass validates itself and reports a bad value as a
`errors.UsageError` naming the flag. Names follow the flags of
google-research/federated (`client_epochs_per_round`, `server_optimizer`...).
"""

from __future__ import annotations

import dataclasses
import math
import re

from tff_pipeline import errors


def _require(ok: bool, flag: str, value: object, expected: str) -> None:
  if not ok:
    raise errors.UsageError(f'--{flag}={value} {expected}')


def _positive_finite(flag: str, value: float) -> None:
  _require(
      isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
      flag, value, 'must be a positive finite number',
  )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """A `tff.learning.optimizers` optimizer, chosen by name.

  Attributes:
    name: Registry name (see `algorithms.optimizers.OPTIMIZERS`).
    learning_rate: Step size.
    momentum: Heavy-ball momentum for `sgd`; 0 means none.
    epsilon: Adaptivity constant tau of adam/yogi/adagrad (Reddi et al. 2021
      use 1e-3 on the server).
    role: 'client' or 'server', used to name the flags in error messages.
  """

  name: str = 'sgd'
  learning_rate: float = 0.1
  momentum: float = 0.0
  epsilon: float = 1e-3
  role: str = 'client'

  def validate(self) -> None:
    _positive_finite(f'{self.role}_learning_rate', self.learning_rate)
    _require(0 <= self.momentum < 1, f'{self.role}_momentum', self.momentum,
             'must be in [0, 1)')
    _positive_finite(f'{self.role}_epsilon', self.epsilon)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Everything the training loop needs besides the task.

  Attributes:
    experiment_name: Names the output subdirectories.
    root_output_dir: Root of `results/`, `checkpoints/` and `logdir/`.
    total_rounds: Number of federated rounds.
    clients_per_round: Clients sampled uniformly each round.
    client_epochs_per_round: Local epochs per round.
    client_batch_size: Local batch size; -1 means one batch of all the
      client's examples (full-batch gradient steps).
    client_optimizer: The clients' optimizer.
    server_optimizer: The server's optimizer, applied to the averaged update.
    algorithm: Registry name of the learning algorithm.
    aggregator: Registry name of the model-update aggregator.
    rounds_per_eval: Evaluate the global model every this many rounds (and
      after the last round).
    rounds_per_checkpoint: Save program state every this many rounds (and
      after the last round).
    seed: Seed of every random choice of the run.
  """

  experiment_name: str
  root_output_dir: str
  total_rounds: int = 10
  clients_per_round: int = 10
  client_epochs_per_round: int = 1
  client_batch_size: int = 10
  client_optimizer: OptimizerConfig = OptimizerConfig()
  server_optimizer: OptimizerConfig = OptimizerConfig(
      learning_rate=1.0, role='server'
  )
  algorithm: str = 'fedavg'
  aggregator: str = 'mean'
  rounds_per_eval: int = 1
  rounds_per_checkpoint: int = 10
  seed: int = 0

  def validate(self, num_clients: int | None = None) -> None:
    _require(
        bool(re.fullmatch(r'[A-Za-z0-9._-]+', self.experiment_name or '')),
        'experiment_name', repr(self.experiment_name),
        'must be non-empty and use only letters, digits, ".", "_" and "-"',
    )
    _require(bool(self.root_output_dir), 'root_output_dir',
             repr(self.root_output_dir), 'must be a directory path')
    _require(self.total_rounds >= 1, 'total_rounds', self.total_rounds,
             'must be positive')
    _require(self.clients_per_round >= 1, 'clients_per_round',
             self.clients_per_round, 'must be positive')
    if num_clients is not None:
      _require(num_clients >= 1, 'num_clients', num_clients,
               'must be positive')
      _require(
          self.clients_per_round <= num_clients, 'clients_per_round',
          self.clients_per_round,
          f'must not exceed --num_clients={num_clients}',
      )
    _require(self.client_epochs_per_round >= 1, 'client_epochs_per_round',
             self.client_epochs_per_round, 'must be positive')
    _require(
        self.client_batch_size >= 1 or self.client_batch_size == -1,
        'client_batch_size', self.client_batch_size,
        'must be positive, or -1 for full-batch steps',
    )
    _require(self.rounds_per_eval >= 1, 'rounds_per_eval',
             self.rounds_per_eval, 'must be positive')
    _require(self.rounds_per_checkpoint >= 1, 'rounds_per_checkpoint',
             self.rounds_per_checkpoint, 'must be positive')
    _require(0 <= self.seed < 2**31, 'seed', self.seed,
             'must be in [0, 2**31)')
    self.client_optimizer.validate()
    self.server_optimizer.validate()
