"""Flags shared by the training binaries, grouped in blocks.

Names follow google-research/federated. Each binary calls the `define_*`
functions with its own defaults, then turns the parsed flags into typed
configs with `training_config()`. `hparams()` returns every flag defined here
and in the binaries, for `hparams.csv`.
"""

from __future__ import annotations

from typing import Any

from absl import flags

from tff_pipeline import aggregators
from tff_pipeline import algorithms
from tff_pipeline import config as config_lib
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
                'checkpoints,logdir}/<experiment_name>. Required.')
  flags.mark_flag_as_required('experiment_name')
  define_string('root_output_dir', d['root_output_dir'],
                'Root directory of all outputs.')
  define_integer('seed', d['seed'],
                 'Seed of every random choice: data, initialisation, client '
                 'sampling, shuffling.')
  define_bool('allow_flag_changes', False,
              'Resume from checkpoints made with other hyperparameters.')
  define_bool('progress', True, 'Show a progress bar on stderr.')

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


def _optimizer_config(role: str) -> config_lib.OptimizerConfig:
  return config_lib.OptimizerConfig(
      name=FLAGS[f'{role}_optimizer'].value,
      learning_rate=FLAGS[f'{role}_learning_rate'].value,
      momentum=FLAGS[f'{role}_momentum'].value,
      epsilon=FLAGS[f'{role}_epsilon'].value,
      role=role,
  )


def training_config() -> config_lib.TrainingConfig:
  """The validated `TrainingConfig` of the parsed flags."""
  config = config_lib.TrainingConfig(
      experiment_name=FLAGS.experiment_name,
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
  )
  config.validate(num_clients=FLAGS.num_clients)
  return config


def hparams() -> dict[str, Any]:
  """Every flag defined through this module, by name, for hparams.csv."""
  return {name: FLAGS[name].value for name in _DEFINED}
