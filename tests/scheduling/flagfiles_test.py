"""The mnist_time_*.flags runs: the stragglers' setting, valid clock flags."""

import dataclasses
import os
import re

import pytest

from tests import helpers
from tff_pipeline import config as config_lib

FLAGS_DIR = os.path.join(helpers.REPO_ROOT, 'experiments', 'flags')
TIME_RUNS = ['wait_all_fedavg', 'deadline_drop_fedavg',
             'deadline_partial_fedavg', 'deadline_partial_compensated']
AGGREGATION = {'aggregator', 'compensation_q'}


def _settings(name):
  values = {}
  with open(os.path.join(FLAGS_DIR, name)) as f:
    for line in f:
      match = re.fullmatch(r'--(\w+)=(\S+)\s*', line)
      if match:
        values[match.group(1)] = match.group(2)
  return values


@pytest.mark.parametrize('run', TIME_RUNS)
def test_time_runs_share_the_stragglers_setting(run):
  stragglers = _settings('mnist_noniid_stragglers_fedavg.flags')
  values = _settings(f'mnist_time_{run}.flags')
  for key, value in stragglers.items():
    if key not in AGGREGATION:
      assert values[key] == value, key
  assert values['target_accuracy'] == '0.95'
  fields = {f.name: f.type for f in dataclasses.fields(
      config_lib.SchedulingConfig)}
  scheduling = {k: (float(v) if fields[k] == 'float' else v)
                for k, v in values.items() if k in fields}
  config = config_lib.TrainingConfig(
      experiment_name=run, root_output_dir='/tmp/x',
      scheduling=config_lib.SchedulingConfig(**scheduling))
  assert config.scheduling.round_policy == run.rsplit('_', 1)[0]
  if run.endswith('compensated'):
    assert values['aggregator'] == 'compensated'
  else:
    assert values['aggregator'] == 'mean'


def test_the_deadline_runs_share_their_deadline():
  deadlines = {_settings(f'mnist_time_{run}.flags').get('deadline_quantile')
               for run in TIME_RUNS if run.startswith('deadline')}
  assert deadlines == {'0.8'}
