"""The settings' declarations: checks, flags, hparams, configs from flags."""

import dataclasses

import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import faults
from tff_pipeline import heterogeneity
from tff_pipeline import registry
from tff_pipeline import settings

TRAINING_FLAGS = [
    'experiment_name', 'root_output_dir', 'total_rounds', 'clients_per_round',
    'client_epochs_per_round', 'client_batch_size', 'client_optimizer',
    'client_learning_rate', 'client_momentum', 'client_epsilon',
    'server_optimizer', 'server_learning_rate', 'server_momentum',
    'server_epsilon', 'algorithm', 'aggregator', 'rounds_per_eval',
    'rounds_per_checkpoint', 'seed', 'straggler_fraction', 'straggler_budget',
    'straggler_min_steps', 'straggler_max_steps', 'capacity_profile',
    'min_capacity', 'slow_client_fraction', 'compensation_normalize',
    'compensation_q', 'compensation_max_factor', 'trim_fraction', 'clip_norm',
    'zeroing', 'dp_noise_multiplier', 'dp_clip_norm', 'dp_adaptive_clipping',
    'dp_delta', 'secure_aggregation', 'compression', 'compression_bits',
    'zeroing_quantile', 'proximal_strength', 'faulty_client_fraction',
    'faulty_mode', 'round_policy', 'deadline_seconds', 'deadline_quantile',
    'oversample_factor', 'device_profile', 'device_file', 'device_gflops',
    'up_bandwidth_mbps', 'down_bandwidth_mbps', 'device_lognormal_sigma',
    'target_accuracy', 'client_selection', 'poc_candidates',
    'selection_loss_examples', 'oort_alpha', 'oort_preferred_seconds',
    'oort_exploration', 'oort_exploration_decay', 'oort_exploration_min',
    'oort_cutoff', 'feedback', 'feedback_power', 'feedback_max_factor',
    'model_width_policy', 'model_widths', 'model_width_mix',
    'model_width_scaler']

BASE = config_lib.TrainingConfig(experiment_name='x', root_output_dir='/tmp/x')


def test_every_training_setting_has_its_flag_in_field_order():
  assert [d.flag for d in settings.walk(config_lib.TrainingConfig)] == (
      TRAINING_FLAGS)


@pytest.mark.parametrize('config_type', [
    config_lib.TrainingConfig, config_lib.OptimizerConfig,
    config_lib.AggregationConfig, config_lib.RunOptions,
    heterogeneity.ComputeHeterogeneity, faults.FaultInjection,
    config_lib.SchedulingConfig, config_lib.SelectionConfig,
    config_lib.FeedbackConfig])
def test_every_field_is_a_setting_a_block_or_internal(config_type):
  for field in dataclasses.fields(config_type):
    declared = (settings.setting_of(field) is not None
                or settings.is_nested(field) or settings.is_internal(field))
    assert declared, f'{config_type.__name__}.{field.name} has no flag'
    if settings.setting_of(field) is not None:
      assert settings.setting_of(field).help, field.name


def test_flag_defaults_are_the_field_defaults_except_where_declared():
  by_flag = {d.flag: d.default
             for d in settings.walk(config_lib.TrainingConfig)}
  assert by_flag['server_learning_rate'] == 1.0
  assert by_flag['client_learning_rate'] == 0.1
  assert by_flag['experiment_name'] is None
  assert by_flag['root_output_dir'] == '/tmp/tff_pipeline'
  assert by_flag['faulty_mode'] == 'nan'
  workers, = [d for d in settings.walk(config_lib.RunOptions)
              if d.flag == 'workers']
  assert workers.default == [] and workers.kind == 'list'


def test_help_fills_in_role_and_registry_choices():
  by_flag = {d.flag: d for d in settings.walk(config_lib.TrainingConfig)}
  assert by_flag['server_momentum'].help == (
      'Server heavy-ball momentum (sgd only).')
  assert by_flag['faulty_mode'].help == (
      'What faulty clients do: ' + faults.FAULT_MODES.help_text())
  assert by_flag['straggler_budget'].choices() == ['epochs', 'steps']
  assert by_flag['capacity_profile'].kind == 'enum'


@pytest.mark.parametrize('build, message', [
    (lambda: config_lib.OptimizerConfig(learning_rate=0, role='server'),
     '--server_learning_rate=0 must be a positive finite number'),
    (lambda: config_lib.AggregationConfig(clip_norm=-1.0),
     '--clip_norm=-1.0 must be >= 0 (0 turns it off)'),
    (lambda: dataclasses.replace(BASE, experiment_name='..'),
     "--experiment_name='..' must be non-empty"),
    (lambda: dataclasses.replace(BASE, root_output_dir=''),
     "--root_output_dir='' must be a directory path"),
    (lambda: heterogeneity.ComputeHeterogeneity(straggler_budget='hours'),
     "--straggler_budget='hours' must be one of epochs, steps"),
    (lambda: faults.FaultInjection(fraction=0.1, mode='evil'),
     "--faulty_mode='evil' is not a known fault mode"),
    (lambda: config_lib.AggregationConfig(compensation_q=10**400),
     '--compensation_q=1000000000'),
])
def test_construction_refuses_bad_values_naming_the_flag(build, message):
  with pytest.raises(errors.UsageError) as raised:
    build()
  assert str(raised.value).startswith(message)
  assert '\n' not in str(raised.value)


def test_num_clients_is_checked_against_the_task():
  BASE.check_num_clients(10)
  with pytest.raises(errors.UsageError,
                     match='^--clients_per_round=10 must not exceed '
                     '--num_clients=9$'):
    BASE.check_num_clients(9)
  with pytest.raises(errors.UsageError, match='^--num_clients=0 must be'):
    BASE.check_num_clients(0)


def test_from_flags_builds_the_same_config_as_by_hand():
  values = {d.flag: d.default for d in settings.walk(config_lib.TrainingConfig)}
  values.update(root_output_dir='/tmp/x', server_learning_rate=0.5,
                server_optimizer='adam', faulty_client_fraction=0.25,
                clip_norm=2.0, capacity_profile='uniform')
  built = settings.from_flags(config_lib.TrainingConfig, values,
                              experiment_name='x')
  assert built == dataclasses.replace(
      BASE,
      server_optimizer=config_lib.OptimizerConfig(
          name='adam', learning_rate=0.5, role='server'),
      faults=faults.FaultInjection(fraction=0.25),
      aggregation=config_lib.AggregationConfig(clip_norm=2.0),
      heterogeneity=heterogeneity.ComputeHeterogeneity(
          capacity_profile='uniform'))
  assert settings.from_flags(config_lib.RunOptions, {'workers': ['a:1']}) == (
      config_lib.RunOptions(workers=('a:1',)))


def test_hparams_of_a_python_run_keep_their_first_shape():
  config = dataclasses.replace(
      BASE, client_optimizer=config_lib.OptimizerConfig(momentum=0.5))
  hparams = config.hparams()
  assert list(hparams) == [
      'experiment_name', 'root_output_dir', 'total_rounds',
      'clients_per_round', 'client_epochs_per_round', 'client_batch_size',
      'client_optimizer', 'client_learning_rate', 'client_momentum',
      'client_epsilon', 'server_optimizer', 'server_learning_rate',
      'server_momentum', 'server_epsilon', 'algorithm', 'aggregator',
      'rounds_per_eval', 'rounds_per_checkpoint', 'seed', 'heterogeneity',
      'aggregation', 'proximal_strength', 'faults', 'scheduling',
      'model_width']
  assert hparams['client_optimizer'] == 'sgd'
  assert hparams['client_momentum'] == 0.5
  assert hparams['server_learning_rate'] == 1.0
  assert hparams['aggregation'] == config_lib.AggregationConfig()
  assert str(hparams['faults']) == "FaultInjection(fraction=0.0, mode='nan')"


def test_registry_subset_keeps_registration_order():
  r = registry.Registry('thing', '--thing')
  r.register('b', 'bee', tags=('t',))(1)
  r.register('a', 'ay')(2)
  r.register('c', 'see', tags=('t',))(3)
  subset = r.subset('t')
  assert r.names() == ['a', 'b', 'c']
  assert subset.names() == ['b', 'c']
  assert subset.help_text() == 'b: bee; c: see'
  assert subset.get('c') == 3
  with pytest.raises(errors.UsageError, match="--thing='a'"):
    subset.get('a')
