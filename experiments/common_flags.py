"""Flags shared by the training binaries, grouped in blocks.

Names follow google-research/federated. Each binary calls the `define_*`
functions with its own defaults, then turns the parsed flags into typed
configs with `training_config()`. `hparams()` returns every flag defined here
and in the binaries, for `hparams.csv`.
"""

from __future__ import annotations

from typing import Any

import os

from absl import flags

from tff_pipeline import aggregators
from tff_pipeline import algorithms
from tff_pipeline import cli
from tff_pipeline import errors
from tff_pipeline import faults
from tff_pipeline import config as config_lib
from tff_pipeline import heterogeneity
from tff_pipeline import runtime
from tff_pipeline.algorithms import optimizers

FLAGS = flags.FLAGS

_DEFINED: list[str] = []


def _define(definer, name: str, default, help_text: str, **kwargs) -> None:
  definer(name, default, help_text, **kwargs)
  _DEFINED.append(name)


def define_enum(name: str, default: str, choices, help_text: str) -> None:
  flags.DEFINE_enum(name, default, list(choices), help_text)
  _DEFINED.append(name)


def define_integer(name: str, default: int, help_text: str) -> None:
  _define(flags.DEFINE_integer, name, default, help_text)


def define_float(name: str, default: float, help_text: str) -> None:
  _define(flags.DEFINE_float, name, default, help_text)


def define_string(name: str, default: str | None, help_text: str) -> None:
  _define(flags.DEFINE_string, name, default, help_text)


def define_bool(name: str, default: bool, help_text: str) -> None:
  _define(flags.DEFINE_bool, name, default, help_text)


def define_list(name: str, default, help_text: str) -> None:
  _define(flags.DEFINE_list, name, default, help_text)


def define_training_flags(**defaults: Any) -> None:
  """Defines the shared flags; keyword arguments override their defaults."""
  d = {
      'total_rounds': 10, 'clients_per_round': 10, 'num_clients': 100,
      'client_epochs_per_round': 1, 'client_batch_size': 10,
      'client_optimizer': 'sgd', 'client_learning_rate': 0.1,
      'server_optimizer': 'sgd', 'server_learning_rate': 1.0,
      'rounds_per_eval': 1, 'rounds_per_checkpoint': 10, 'seed': 0,
      'root_output_dir': '/tmp/tff_pipeline', 'algorithm': 'fedavg',
      'aggregator': 'mean',
  }
  unknown = set(defaults) - set(d)
  if unknown:
    raise ValueError(f'unknown flag defaults: {sorted(unknown)}')
  d.update(defaults)

  # Experiment and output.
  define_string('experiment_name', None,
                'Name of the run; outputs go to <root_output_dir>/{results,'
                'checkpoints,logdir}/<experiment_name>. Defaults to the name '
                'of the --flagfile (without .flags); required otherwise.')
  define_string('root_output_dir', d['root_output_dir'],
                'Root directory of all outputs.')
  define_integer('seed', d['seed'],
                 'Seed of every random choice: data, initialisation, client '
                 'sampling, shuffling.')
  define_bool('allow_flag_changes', False,
              'Resume from checkpoints made with other hyperparameters.')
  define_bool('progress', True, 'Show a progress bar on stderr.')
  define_list('workers', [],
              'host:port of TFF workers started with `python -m '
              'experiments.run_worker`; each round\'s clients are split '
              'across them. Empty: one local worker. Plaintext unless the '
              '--worker_tls_* flags are given (docs/security.md).')
  define_float('worker_connect_timeout', 30.0,
               'Seconds to wait for a worker to become reachable before '
               'failing with an error that names it.')
  define_string('worker_tls_ca', '',
                'PEM CA certificate that signed the --workers\' '
                'certificates; turns on TLS to them.')
  define_string('worker_tls_cert', '',
                'PEM client certificate of this coordinator, for workers '
                'started with --tls_client_ca.')
  define_string('worker_tls_key', '', 'PEM private key of --worker_tls_cert.')

  # Federated training.
  define_integer('total_rounds', d['total_rounds'],
                 'Number of federated rounds.')
  define_integer('num_clients', d['num_clients'],
                 'Number of clients the data is split into.')
  define_integer('clients_per_round', d['clients_per_round'],
                 'Clients sampled uniformly (without replacement) per round.')
  define_integer('client_epochs_per_round', d['client_epochs_per_round'],
                 'Local epochs per round.')
  define_integer('client_batch_size', d['client_batch_size'],
                 'Local batch size; -1 means full-batch steps.')
  define_enum('algorithm', d['algorithm'], algorithms.ALGORITHMS.names(),
              'Learning algorithm: ' + algorithms.ALGORITHMS.help_text())
  define_enum('aggregator', d['aggregator'], aggregators.AGGREGATORS.names(),
              'Aggregation of model updates: '
              + aggregators.AGGREGATORS.help_text())
  define_integer('rounds_per_eval', d['rounds_per_eval'],
                 'Evaluate the global model every this many rounds.')
  define_integer('rounds_per_checkpoint', d['rounds_per_checkpoint'],
                 'Save a checkpoint every this many rounds.')

  # Optimizers.
  for role in ('client', 'server'):
    define_enum(f'{role}_optimizer', d[f'{role}_optimizer'],
                optimizers.OPTIMIZERS.names(),
                f'{role.capitalize()} optimizer: '
                + optimizers.OPTIMIZERS.help_text())
    define_float(f'{role}_learning_rate', d[f'{role}_learning_rate'],
                 f'{role.capitalize()} learning rate.')
    define_float(f'{role}_momentum', 0.0,
                 f'{role.capitalize()} heavy-ball momentum (sgd only).')
    define_float(f'{role}_epsilon', 1e-3,
                 f'{role.capitalize()} adaptivity constant tau '
                 '(adam, yogi, adagrad).')
  define_compensation_flags()
  define_aggregation_flags()
  define_fault_flags()


def define_compensation_flags() -> None:
  """Simulated heterogeneous compute, and the compensated aggregator."""
  define_float('straggler_fraction', 0.0,
               'Probability that a sampled client is a straggler this round.')
  define_enum('straggler_budget', 'epochs', heterogeneity.STRAGGLER_BUDGETS,
              'epochs: a straggler runs a whole number of epochs in [1, E]; '
              'steps: a number of steps in [--straggler_min_steps, '
              '--straggler_max_steps].')
  define_integer('straggler_min_steps', 1,
                 'steps: smallest straggler budget, in local steps.')
  define_integer('straggler_max_steps', 0,
                 'steps: largest straggler budget; 0 means the full budget '
                 'minus one step.')
  define_enum('capacity_profile', 'none', heterogeneity.CAPACITY_PROFILES.names(),
              'Per-client compute capacity, fixed across rounds: '
              + heterogeneity.CAPACITY_PROFILES.help_text())
  define_float('min_capacity', 0.1,
               'Smallest capacity (uniform profile) or the slow clients\' '
               'capacity (minority profile), in (0, 1].')
  define_float('slow_client_fraction', 0.2,
               'minority capacity profile: share of slow clients (the same '
               'clients as the --feature_skew minority for equal fractions).')
  define_bool('compensation_normalize', True,
              'compensated aggregator: normalise each update by its local '
              'steps and rescale by tau_eff (FedNova).')
  define_float('compensation_q', 0.0,
               'compensated aggregator: weight clients by (L_i / mean L)^q, '
               'L_i the loss of the incoming model on their data (q-FFL); '
               '0 turns it off.')
  define_float('compensation_max_factor', 3.0,
               'compensated aggregator: clip the loss factor (L_i / mean '
               'L)^q to [1/c, c] for this c, so no client takes over a '
               'round.')


def define_aggregation_flags() -> None:
  """Robust aggregators and the DP, secure, compression, clip, zero wrappers."""
  define_float('proximal_strength', 0.0,
               'fedprox: mu of the proximal term (mu/2)||w - w_global||^2.')
  define_float('trim_fraction', 0.1,
               'trimmed_mean: share of values trimmed at each end, in '
               '[0, 0.5).')
  define_float('clip_norm', 0.0,
               'Clip each client update to this L2 norm; 0 turns it off.')
  define_bool('zeroing', False,
              'Zero out updates whose norm is far above the recent ones '
              '(adaptive 98th percentile, as in tff.learning).')
  define_float('dp_noise_multiplier', 0.0,
               'Differential privacy: Gaussian noise stddev / clip norm; > 0 '
               'turns DP on (DP-FedAvg, McMahan et al. 2018).')
  define_float('dp_clip_norm', 1.0,
               'DP: L2 clip norm of each client update (initial value with '
               '--dp_adaptive_clipping).')
  define_bool('dp_adaptive_clipping', False,
              'DP: adapt the clip norm to the median update norm '
              '(Andrew et al. 2021).')
  define_float('dp_delta', 0.0,
               'DP: delta of the reported (epsilon, delta); 0 means '
               '1/num_clients.')
  define_bool('secure_aggregation', False,
              'Sum the (weighted) updates with TFF\'s secure sum, with '
              'adaptive bounds.')
  define_bool('compression', False,
              'Quantize update tensors of more than 20000 values to '
              '--compression_bits bits before summing.')
  define_integer('compression_bits', 8,
                 'compression: bits per quantized value.')


def define_fault_flags() -> None:
  """Simulated faulty clients."""
  define_float('faulty_client_fraction', 0.0,
               'Share of each round\'s sampled clients that are faulty, '
               'chosen from (seed, round).')
  define_enum('faulty_mode', 'nan', faults.FAULT_MODES.names(),
              'What faulty clients do: ' + faults.FAULT_MODES.help_text())


def aggregation_config() -> config_lib.AggregationConfig:
  return config_lib.AggregationConfig(
      compensation_normalize=FLAGS.compensation_normalize,
      compensation_q=FLAGS.compensation_q,
      compensation_max_factor=FLAGS.compensation_max_factor,
      trim_fraction=FLAGS.trim_fraction,
      clip_norm=FLAGS.clip_norm,
      zeroing=FLAGS.zeroing,
      dp_noise_multiplier=FLAGS.dp_noise_multiplier,
      dp_clip_norm=FLAGS.dp_clip_norm,
      dp_adaptive_clipping=FLAGS.dp_adaptive_clipping,
      dp_delta=FLAGS.dp_delta,
      secure_aggregation=FLAGS.secure_aggregation,
      compression=FLAGS.compression,
      compression_bits=FLAGS.compression_bits,
  )


def _optimizer_config(role: str) -> config_lib.OptimizerConfig:
  return config_lib.OptimizerConfig(
      name=FLAGS[f'{role}_optimizer'].value,
      learning_rate=FLAGS[f'{role}_learning_rate'].value,
      momentum=FLAGS[f'{role}_momentum'].value,
      epsilon=FLAGS[f'{role}_epsilon'].value,
      role=role,
  )


def experiment_name() -> str:
  """--experiment_name, or the name of the last --flagfile."""
  if FLAGS.experiment_name:
    return FLAGS.experiment_name
  if cli.FLAGFILES:
    return os.path.basename(cli.FLAGFILES[-1]).removesuffix('.flags')
  raise errors.UsageError(
      '--experiment_name is required (or pass --flagfile=NAME.flags, which '
      'names the run NAME)')


def training_config() -> config_lib.TrainingConfig:
  """The validated `TrainingConfig` of the parsed flags."""
  config = config_lib.TrainingConfig(
      experiment_name=experiment_name(),
      root_output_dir=FLAGS.root_output_dir,
      total_rounds=FLAGS.total_rounds,
      clients_per_round=FLAGS.clients_per_round,
      client_epochs_per_round=FLAGS.client_epochs_per_round,
      client_batch_size=FLAGS.client_batch_size,
      client_optimizer=_optimizer_config('client'),
      server_optimizer=_optimizer_config('server'),
      algorithm=FLAGS.algorithm,
      aggregator=FLAGS.aggregator,
      rounds_per_eval=FLAGS.rounds_per_eval,
      rounds_per_checkpoint=FLAGS.rounds_per_checkpoint,
      seed=FLAGS.seed,
      heterogeneity=heterogeneity.ComputeHeterogeneity(
          straggler_fraction=FLAGS.straggler_fraction,
          straggler_budget=FLAGS.straggler_budget,
          straggler_min_steps=FLAGS.straggler_min_steps,
          straggler_max_steps=FLAGS.straggler_max_steps,
          capacity_profile=FLAGS.capacity_profile,
          min_capacity=FLAGS.min_capacity,
          slow_client_fraction=FLAGS.slow_client_fraction,
      ),
      aggregation=aggregation_config(),
      proximal_strength=FLAGS.proximal_strength,
      faults=faults.FaultInjection(fraction=FLAGS.faulty_client_fraction,
                                   mode=FLAGS.faulty_mode),
  )
  config.validate(num_clients=FLAGS.num_clients)
  return config


def run_options() -> dict[str, Any]:
  """Keyword arguments of `loop.run_federated` that come from flags."""
  return dict(
      hparams=hparams(),
      allow_flag_changes=FLAGS.allow_flag_changes,
      progress=FLAGS.progress,
      workers=runtime.parse_worker_addresses(FLAGS.workers),
      worker_connect_timeout=FLAGS.worker_connect_timeout,
      worker_tls=runtime.ClientTls.from_flags(
          FLAGS.worker_tls_ca, FLAGS.worker_tls_cert, FLAGS.worker_tls_key),
  )


def hparams() -> dict[str, Any]:
  """Every flag defined through this module, by name, for hparams.csv."""
  values = {name: FLAGS[name].value for name in _DEFINED}
  values['experiment_name'] = experiment_name()
  return values
