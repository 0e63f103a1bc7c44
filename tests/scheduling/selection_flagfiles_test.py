"""The selection and feedback flagfiles: the compensated deadline run plus
their own settings, and those settings valid."""

import pytest

from tests.scheduling import flagfiles_test
from tff_pipeline import config as config_lib

BASE = 'mnist_time_deadline_partial_compensated.flags'
RUNS = {
    'mnist_time_deadline_partial_compensated_poc.flags': {
        'client_selection': 'power_of_choice', 'poc_candidates': '20'},
    'mnist_time_deadline_partial_compensated_oort.flags': {
        'client_selection': 'oort'},
    'mnist_time_deadline_partial_feedback.flags': {
        'feedback_max_factor': '2.0'},
}


def _flags(name):
  with open(f'{flagfiles_test.FLAGS_DIR}/{name}') as f:
    return [line.strip() for line in f if line.startswith('--')]


@pytest.mark.parametrize('run', sorted(RUNS))
def test_each_run_is_the_compensated_deadline_run_plus_its_settings(run):
  base = flagfiles_test._settings(BASE)  # pylint: disable=protected-access
  values = flagfiles_test._settings(run)  # pylint: disable=protected-access
  assert values == {**base, **RUNS[run]}
  extra = [line for line in _flags(run) if line not in _flags(BASE)]
  if run.endswith('feedback.flags'):
    assert extra == ['--feedback', '--feedback_max_factor=2.0']
  selection = config_lib.SelectionConfig(
      client_selection=values.get('client_selection', 'uniform'),
      poc_candidates=int(values.get('poc_candidates', 0)))
  feedback = config_lib.FeedbackConfig(
      feedback='--feedback' in extra,
      feedback_max_factor=float(values.get('feedback_max_factor', 2.0)))
  config = config_lib.TrainingConfig(
      experiment_name='x', root_output_dir='/tmp/x',
      clients_per_round=int(values['clients_per_round']),
      aggregator=values['aggregator'],
      scheduling=config_lib.SchedulingConfig(
          round_policy=values['round_policy'],
          deadline_quantile=float(values['deadline_quantile']),
          selection=selection, feedback=feedback))
  assert config.scheduling.selection == selection
