"""TrainingConfig validation: each bad value is named by its flag."""

import dataclasses

import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import faults as faults_lib

BASE = config_lib.TrainingConfig(experiment_name='x', root_output_dir='/tmp/x')


@pytest.mark.parametrize('change, flag', [
    ({'clients_per_round': 0}, '--clients_per_round=0'),
    ({'clients_per_round': 11}, '--clients_per_round=11 must not exceed'),
    ({'total_rounds': 0}, '--total_rounds=0'),
    ({'client_batch_size': 0}, '--client_batch_size=0'),
    ({'client_epochs_per_round': -2}, '--client_epochs_per_round=-2'),
    ({'experiment_name': 'a/b'}, '--experiment_name'),
    ({'seed': -1}, '--seed=-1'),
    ({'rounds_per_eval': 0}, '--rounds_per_eval=0'),
])
def test_bad_values_name_their_flag(change, flag):
  with pytest.raises(errors.UsageError, match=flag.replace('[', r'\[')):
    dataclasses.replace(BASE, **change).validate(num_clients=10)


def test_defaults_are_valid():
  BASE.validate(num_clients=10)


@pytest.mark.parametrize('change, message', [
    ({'aggregator': 'median',
      'aggregation': config_lib.AggregationConfig(compression=True)},
     '--aggregator=median needs the individual updates and cannot be '
     'combined with --compression'),
    ({'aggregator': 'trimmed_mean',
      'aggregation': config_lib.AggregationConfig(dp_noise_multiplier=1.0)},
     '--aggregator=trimmed_mean needs the individual updates and cannot be '
     'combined with --dp_noise_multiplier'),
    ({'aggregation': config_lib.AggregationConfig(compression=True,
                                                  secure_aggregation=True)},
     '--secure_aggregation and --compression cannot be combined'),
    ({'algorithm': 'fedsgd', 'aggregator': 'compensated'},
     '--algorithm=fedsgd runs none'),
    ({'algorithm': 'fedsgd',
      'faults': faults_lib.FaultInjection(fraction=0.5, mode='sign_flip')},
     '--faulty_mode=sign_flip corrupts updates, which --algorithm=fedsgd '
     'cannot simulate'),
])
def test_settings_that_do_not_combine_are_refused(change, message):
  # Configs validate at construction, so the refusal comes from `replace`.
  with pytest.raises(errors.UsageError, match=message):
    dataclasses.replace(BASE, **change)


def test_combinations_that_go_together_pass():
  for config in (
      dataclasses.replace(BASE, aggregator='median'),
      dataclasses.replace(BASE, algorithm='fedsgd', faults=(
          faults_lib.FaultInjection(fraction=0.5, mode='zero_examples'))),
      dataclasses.replace(BASE, algorithm='fedsgd', aggregation=(
          config_lib.AggregationConfig(dp_noise_multiplier=1.0))),
      dataclasses.replace(BASE, aggregator='compensated', algorithm='fedprox',
                          aggregation=config_lib.AggregationConfig(
                              secure_aggregation=True))):
    config_lib.check_combinations(config)
    config.validate(num_clients=10)


@pytest.mark.parametrize('value', [0.0, 1.0, float('nan'), 2])
def test_zeroing_quantile_must_be_a_probability(value):
  with pytest.raises(errors.UsageError,
                     match=rf'--zeroing_quantile={value} must be in \(0, 1\)'):
    config_lib.AggregationConfig(zeroing_quantile=value)
