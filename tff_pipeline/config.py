"""Typed experiment configuration, built from flags or by hand (notebooks).

Each dataclass validates itself and reports a bad value as a
`errors.UsageError` naming the flag. Names follow the flags of
google-research/federated (`client_epochs_per_round`, `server_optimizer`...).
"""

from __future__ import annotations

import dataclasses
import re

from tff_pipeline import _structure
from tff_pipeline import errors
from tff_pipeline import faults as faults_lib
from tff_pipeline import heterogeneity as heterogeneity_lib

_finite = _structure.finite_number


def _require(ok: bool, flag: str, value: object, expected: str) -> None:
  if not ok:
    raise errors.UsageError(f'--{flag}={value} {expected}')


def _positive_finite(flag: str, value: float) -> None:
  _require(
      isinstance(value, (int, float)) and _finite(value) and value > 0,
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
class AggregationConfig:
  """Settings of the model-update aggregator and of its wrappers.

  Attributes:
    compensation_normalize: `compensated`: FedNova normalisation of each
      update by its local steps.
    compensation_q: `compensated`: power q of the loss-aware reweighting; 0
      turns it off.
    compensation_max_factor: `compensated`: the loss factor is clipped to
      [1/c, c] for this c >= 1.
    trim_fraction: `trimmed_mean`: share trimmed at each end, in [0, 0.5).
    clip_norm: L2 clipping of each client's update; 0 turns it off.
    zeroing: Zero out updates whose norm is far above the recent ones
      (TFF's adaptive zeroing).
    dp_noise_multiplier: Gaussian noise stddev / clip norm; > 0 turns
      differential privacy on.
    dp_clip_norm: DP clip norm (initial value with adaptive clipping).
    dp_adaptive_clipping: Adapt the DP clip norm to the median update norm.
    dp_delta: The delta of the reported (epsilon, delta); 0 means
      1 / num_clients.
    secure_aggregation: Sum updates with TFF's secure sum.
    compression: Quantize large update tensors before summing.
    compression_bits: Bits per value of the quantized tensors.
  """

  compensation_normalize: bool = True
  compensation_q: float = 0.0
  compensation_max_factor: float = 3.0
  trim_fraction: float = 0.1
  clip_norm: float = 0.0
  zeroing: bool = False
  dp_noise_multiplier: float = 0.0
  dp_clip_norm: float = 1.0
  dp_adaptive_clipping: bool = False
  dp_delta: float = 0.0
  secure_aggregation: bool = False
  compression: bool = False
  compression_bits: int = 8

  @property
  def dp(self) -> bool:
    return self.dp_noise_multiplier > 0

  def validate(self) -> None:
    _require(_finite(self.compensation_q) and self.compensation_q >= 0,
             'compensation_q', self.compensation_q, 'must be >= 0')
    _require(
        _finite(self.compensation_max_factor)
        and self.compensation_max_factor >= 1,
        'compensation_max_factor', self.compensation_max_factor,
        'must be >= 1')
    _require(0 <= self.trim_fraction < 0.5, 'trim_fraction',
             self.trim_fraction, 'must be in [0, 0.5)')
    _require(_finite(self.clip_norm) and self.clip_norm >= 0,
             'clip_norm', self.clip_norm, 'must be >= 0 (0 turns it off)')
    _require(
        _finite(self.dp_noise_multiplier)
        and self.dp_noise_multiplier >= 0,
        'dp_noise_multiplier', self.dp_noise_multiplier,
        'must be >= 0 (0 turns DP off)')
    _positive_finite('dp_clip_norm', self.dp_clip_norm)
    _require(0 <= self.dp_delta < 1, 'dp_delta', self.dp_delta,
             'must be in [0, 1) (0 means 1/num_clients)')
    _require(1 <= self.compression_bits <= 16, 'compression_bits',
             self.compression_bits, 'must be in 1..16')


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
    heterogeneity: Simulated per-client compute budgets.
    aggregation: Settings of the aggregator and its wrappers.
    proximal_strength: `fedprox`: mu of the proximal term.
    faults: Simulated faulty clients.
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
  heterogeneity: heterogeneity_lib.ComputeHeterogeneity = (
      heterogeneity_lib.ComputeHeterogeneity())
  aggregation: AggregationConfig = AggregationConfig()
  proximal_strength: float = 0.0
  faults: faults_lib.FaultInjection = faults_lib.FaultInjection()

  def validate(self, num_clients: int | None = None) -> None:
    _require(
        bool(re.fullmatch(r'[A-Za-z0-9._-]+', self.experiment_name or ''))
        and self.experiment_name not in ('.', '..'),
        'experiment_name', repr(self.experiment_name),
        'must be non-empty, use only letters, digits, ".", "_" and "-", and '
        'not be "." or ".." (which would leave the run\'s directories)',
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
    self.heterogeneity.validate()
    self.aggregation.validate()
    self.faults.validate()
    _require(
        _finite(self.proximal_strength) and self.proximal_strength >= 0,
        'proximal_strength', self.proximal_strength, 'must be >= 0')
    check_combinations(self)


# ----------------------------------------------------------------------------
# Which settings combine: every such rule of the pipeline, in one place.
# ----------------------------------------------------------------------------

SUM_REPLACEMENTS = ('--dp_noise_multiplier', '--secure_aggregation',
                    '--compression')
"""Flags that each replace the sum at the core of the mean."""

AGGREGATORS_OF_INDIVIDUAL_UPDATES = ('median', 'trimmed_mean')
"""Aggregators that need every client's update, not a sum of them."""


def check_combinations(config: TrainingConfig) -> None:
  """Raises `errors.UsageError` if settings of `config` do not go together.

  The builders of aggregators and algorithms rely on these rules and call
  this too, for configs built by hand and never validated.
  """
  agg = config.aggregation
  on = dict(zip(SUM_REPLACEMENTS, (agg.dp, agg.secure_aggregation,
                                   agg.compression)))
  replacing = [flag for flag in SUM_REPLACEMENTS if on[flag]]
  if len(replacing) > 1:
    raise errors.UsageError(
        f'{" and ".join(replacing)} cannot be combined: each replaces the '
        'sum at the core of the mean; choose one')
  if config.aggregator in AGGREGATORS_OF_INDIVIDUAL_UPDATES and replacing:
    raise errors.UsageError(
        f'--aggregator={config.aggregator} needs the individual updates and '
        f'cannot be combined with {replacing[0]}')
  if config.algorithm == 'fedsgd':
    if config.aggregator == 'compensated':
      raise errors.UsageError(
          '--aggregator=compensated normalises local steps, but '
          '--algorithm=fedsgd runs none; use fedavg or fedprox')
    if config.faults.corrupts_updates:
      raise errors.UsageError(
          f'--faulty_mode={config.faults.mode} corrupts updates, which '
          '--algorithm=fedsgd cannot simulate; use fedavg or fedprox')
