"""The binaries' flags, generated from the settings' declarations.

Every setting is declared once in the library, with its flag name, type,
default, help text and checks (`tff_pipeline/settings.py`): the training
settings in `config.TrainingConfig` and the blocks it nests, the run options
in `config.RunOptions`, the task settings in the task specs. This module
only lays them out in blocks, defines one absl flag per setting (each binary
may override defaults), and maps the parsed flags back to typed configs.
The blocks' order is that of the `hparams.csv` columns and of docs/flags.md
(`python -m experiments.flags_doc`).

To add a flag: declare the field with `settings.setting(...)` in its config
dataclass; name it in a block of `TRAINING_BLOCKS` unless the block already
takes the rest of that dataclass's settings (as the aggregation block does).
A `RunOptions` field reaches `loop.run_federated` as the keyword argument of
its name (the three `worker_tls_*` flags together become its `worker_tls`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import flags

from tff_pipeline import cli
from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import runtime
from tff_pipeline import settings

FLAGS = flags.FLAGS

TRAINING_BLOCKS: tuple[tuple[str, tuple[str | type, ...]], ...] = (
    ('Experiment, output and execution', (
        'experiment_name', 'root_output_dir', 'seed', 'allow_flag_changes',
        'progress', 'workers', 'worker_connect_timeout', 'worker_tls_ca',
        'worker_tls_cert', 'worker_tls_key')),
    ('Federated training', (
        'total_rounds', 'num_clients', 'clients_per_round',
        'client_epochs_per_round', 'client_batch_size', 'algorithm',
        'aggregator', 'rounds_per_eval', 'rounds_per_checkpoint')),
    ('Optimizers', (
        'client_optimizer', 'client_learning_rate', 'client_momentum',
        'client_epsilon', 'server_optimizer', 'server_learning_rate',
        'server_momentum', 'server_epsilon')),
    ('Heterogeneous compute and the compensated aggregator', (
        'straggler_fraction', 'straggler_budget', 'straggler_min_steps',
        'straggler_max_steps', 'capacity_profile', 'min_capacity',
        'slow_client_fraction', 'compensation_normalize', 'compensation_q',
        'compensation_max_factor')),
    ('Aggregation: robust statistics, DP, secure sum, compression, '
     'clipping', (
         'proximal_strength', 'trim_fraction', 'clip_norm', 'zeroing',
         'dp_noise_multiplier', 'dp_clip_norm', 'dp_adaptive_clipping',
         'dp_delta', 'secure_aggregation', 'compression',
         'compression_bits', config_lib.AggregationConfig)),
    ('Faulty clients', ('faulty_client_fraction', 'faulty_mode')),
    ('Simulated time: devices, round policies, deadlines',
     (config_lib.SchedulingConfig,)),
    ('Client selection and feedback to lagging clients', (
        'client_selection', 'poc_candidates', 'selection_loss_examples',
        'oort_alpha', 'oort_preferred_seconds', 'oort_exploration',
        'oort_exploration_decay', 'oort_exploration_min', 'oort_cutoff',
        'feedback', 'feedback_power', 'feedback_max_factor')),
    ('Models sized to each device (HeteroFL)',
     (config_lib.ModelWidthConfig,)),
)
"""The shared flags, in blocks: (title, entries). An entry is a flag name,
or a config dataclass standing for those of its settings that no block names
(in declaration order): a new `AggregationConfig` setting gets its flag, its
`hparams.csv` column and its docs/flags.md row with no edit here."""


def training_blocks() -> list[tuple[str, list[str]]]:
  """`TRAINING_BLOCKS` with each config dataclass expanded to flag names."""
  named = {entry for _, entries in TRAINING_BLOCKS for entry in entries
           if isinstance(entry, str)}
  return [(title, [name for entry in entries for name in (
      [entry] if isinstance(entry, str) else
      [d.flag for d in settings.walk(entry) if d.flag not in named])])
          for title, entries in TRAINING_BLOCKS]


def training_settings() -> dict[str, settings.Declared]:
  """Every shared setting by flag name (see `TRAINING_BLOCKS`)."""
  declared = [*settings.walk(config_lib.TrainingConfig),
              *settings.walk(config_lib.RunOptions),
              settings.Declared(
                  flag='num_clients', setting=config_lib.NUM_CLIENTS,
                  path=(), default=config_lib.NUM_CLIENTS.flag_default,
                  kind='integer', role='')]
  return {d.flag: d for d in declared}


# What the binary defined, in order: (block title, flag names). Read by
# `hparams()` and by experiments/flags_doc.py.
DEFINED: list[tuple[str, list[str]]] = []
_FLAG_VALUES: list[flags.FlagValues] = [FLAGS]


@contextlib.contextmanager
def defining_into(
    flag_values: flags.FlagValues,
) -> Iterator[list[tuple[str, list[str]]]]:
  """Defines flags into `flag_values` instead of the global FLAGS (for
  experiments/flags_doc.py, which imports both binaries); yields `DEFINED`."""
  saved = DEFINED[:]
  DEFINED.clear()
  _FLAG_VALUES.append(flag_values)
  try:
    yield DEFINED
  finally:
    _FLAG_VALUES.pop()
    DEFINED[:] = saved


_DEFINERS = {
    'string': flags.DEFINE_string, 'integer': flags.DEFINE_integer,
    'float': flags.DEFINE_float, 'bool': flags.DEFINE_bool,
    'list': flags.DEFINE_list,
}


def _define_flag(declared: settings.Declared, default: Any) -> None:
  flag_values = _FLAG_VALUES[-1]
  if declared.kind == 'enum':
    flags.DEFINE_enum(declared.flag, default, declared.choices(),
                      declared.help, flag_values=flag_values)
  else:
    _DEFINERS[declared.kind](declared.flag, default, declared.help,
                             flag_values=flag_values)


def define_block(title: str, declared: Sequence[settings.Declared],
                 defaults: Mapping[str, Any] | None = None) -> None:
  """Defines a block of flags; `defaults` overrides some defaults by name."""
  defaults = dict(defaults or {})
  unknown = set(defaults) - {d.flag for d in declared}
  if unknown:
    raise ValueError(f'unknown flag defaults: {sorted(unknown)}')
  for d in declared:
    _define_flag(d, defaults.get(d.flag, d.default))
  DEFINED.append((title, [d.flag for d in declared]))


def define_training_flags(**defaults: Any) -> None:
  """Defines the shared flags; keyword arguments override their defaults."""
  catalogue = training_settings()
  unknown = set(defaults) - set(catalogue)
  if unknown:
    raise ValueError(f'unknown flag defaults: {sorted(unknown)}')
  for title, names in training_blocks():
    define_block(title, [catalogue[name] for name in names],
                 {n: v for n, v in defaults.items() if n in names})


def define_task_flags(title: str, spec_type: type,
                      **defaults: Any) -> None:
  """Defines the flags declared by a task spec (e.g. `MnistTaskSpec`)."""
  define_block(title, list(settings.walk(spec_type)), defaults)


def flag_values() -> dict[str, Any]:
  """The parsed value of every flag defined here, by name."""
  return {name: FLAGS[name].value
          for _, names in DEFINED for name in names}


def task_spec(spec_type: type, **fixed: Any) -> Any:
  """The task spec of the parsed flags, with `num_clients` and `seed`."""
  return settings.from_flags(
      spec_type, flag_values(), num_clients=FLAGS.num_clients,
      seed=FLAGS.seed, **fixed)


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
  """The `TrainingConfig` of the parsed flags (validated as it is built,
  and against --num_clients)."""
  config = settings.from_flags(config_lib.TrainingConfig, flag_values(),
                               experiment_name=experiment_name())
  config.check_num_clients(FLAGS.num_clients)
  return config


def run_options() -> dict[str, Any]:
  """Keyword arguments of `loop.run_federated` that come from flags."""
  options = {field.name: FLAGS[field.name].value
             for field in dataclasses.fields(config_lib.RunOptions)}
  options['workers'] = runtime.parse_worker_addresses(options['workers'])
  options['worker_tls'] = runtime.ClientTls.from_flags(
      options.pop('worker_tls_ca'), options.pop('worker_tls_cert'),
      options.pop('worker_tls_key'))
  return dict(hparams=hparams(), **options)


def hparams() -> dict[str, Any]:
  """Every flag defined through this module, by name, for hparams.csv."""
  values = flag_values()
  values['experiment_name'] = experiment_name()
  return values
