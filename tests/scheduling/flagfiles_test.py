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


WIDTH_FLAGS = {'model_width_policy', 'model_widths', 'model_width_mix'}


def _width_config(values, num_clients):
  width = config_lib.ModelWidthConfig(**{
      k: (tuple(v.split(',')) if k in ('model_widths', 'model_width_mix')
          else v) for k, v in values.items() if k in WIDTH_FLAGS})
  config = config_lib.TrainingConfig(
      experiment_name='w', root_output_dir='/tmp/x',
      scheduling=config_lib.SchedulingConfig(
          round_policy=values.get('round_policy', 'budgets'),
          deadline_quantile=float(values.get('deadline_quantile', 0))),
      model_width=width)
  config.check_num_clients(num_clients)
  return config


def test_the_heterofl_time_run_is_partial_work_with_capacity_widths():
  """mnist_time_deadline_heterofl.flags: deadline_partial_fedavg's setting
  and deadline, plus widths fitted to it (docs/heterofl.md)."""
  partial = _settings('mnist_time_deadline_partial_fedavg.flags')
  values = _settings('mnist_time_deadline_heterofl.flags')
  assert {k: v for k, v in values.items() if k not in WIDTH_FLAGS} == partial
  config = _width_config(values, int(values['num_clients']))
  assert config.model_width.model_width_policy == 'capacity'
  assert config.model_width.widths == (1.0, 0.5, 0.25, 0.125, 0.0625)
  assert config.model_width.model_width_scaler  # the paper's default


@pytest.mark.parametrize('run, widths, mix', [
    ('full', (1.0,), (100,)),
    ('mix', (1.0, 0.5, 0.25, 0.125, 0.0625), (20,) * 5),
    ('smallest', (0.0625,), (100,))])
def test_the_iid_width_sweep_is_the_main_job_with_widths(run, widths, mix):
  main = _settings('mnist_fedavg_cnn.flags')
  values = _settings(f'mnist_heterofl_iid_{run}.flags')
  cadence = {'rounds_per_eval', 'rounds_per_checkpoint'}
  assert ({k: v for k, v in values.items() if k not in WIDTH_FLAGS | cadence}
          == {k: v for k, v in main.items() if k not in cadence})
  config = _width_config(values, int(values['num_clients']))
  assert config.model_width.widths == widths
  assert config.model_width.mix == mix
