"""TrainingConfig validation: each bad value is named by its flag."""

import dataclasses

import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors

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
