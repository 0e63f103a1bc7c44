"""Selection and feedback in the scheduler: what they plan, what they record,
and that their state survives a resume."""

import numpy as np
import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline.data import regression
from tff_pipeline.scheduling import clock
from tff_pipeline.scheduling import feedback
from tff_pipeline.scheduling import records
from tff_pipeline.scheduling import scheduler as scheduler_lib
from tff_pipeline.scheduling import selecting
from tff_pipeline.scheduling import selection
from tff_pipeline.training import loop

SPEC = regression.RegressionSpec(num_clients=10, examples_per_client=20,
                                 noise_std=0.3, size_exponent=1.0, seed=3)


def _config(tmp_path, selection_config=None, feedback_config=None,
            **scheduling):
  return config_lib.TrainingConfig(
      experiment_name='exp', root_output_dir=str(tmp_path), total_rounds=4,
      clients_per_round=3, client_batch_size=4, client_epochs_per_round=1,
      client_optimizer=config_lib.OptimizerConfig(learning_rate=0.05),
      aggregator='compensated', rounds_per_checkpoint=2, seed=5,
      scheduling=config_lib.SchedulingConfig(
          selection=selection_config or config_lib.SelectionConfig(),
          feedback=feedback_config or config_lib.FeedbackConfig(),
          **scheduling))


def _table_losses(table):
  """A losses callback that reads a fixed table (ignores the model)."""
  return lambda weights, round_num: (
      lambda indices: table[np.asarray(indices)])


def test_build_keeps_the_clocks_scheduler_by_default(task, tmp_path):
  assert type(selecting.build(task, _config(tmp_path))) is (
      scheduler_lib.Scheduler)
  oort = _config(tmp_path, config_lib.SelectionConfig(client_selection='oort'))
  assert isinstance(selecting.build(task, oort),
                    selecting.SelectingScheduler)


def test_feedback_fills_the_deadline_and_records_the_round(task, tmp_path):
  config = _config(
      tmp_path, feedback_config=config_lib.FeedbackConfig(
          feedback=True, feedback_max_factor=3.0),
      round_policy='deadline_partial', device_profile='lognormal',
      device_lognormal_sigma=1.0, deadline_quantile=0.9,
      device_gflops=1e-6)
  table = np.linspace(0.5, 5.0, 10)
  scheduler = selecting.SelectingScheduler(task, config,
                                           losses=_table_losses(table))
  candidates = scheduler.sample(1, 3)
  base = scheduler_lib.Scheduler(task, config).plan(1, candidates)
  scheduled = scheduler.plan(1, candidates)
  index = [task.train_data.client_index(c) for c in candidates]
  # Reference: the rule of feedback.py by hand, Lbar over the round's
  # clients (nothing else is known yet), weighted by data.
  sizes = task.train_data.client_sizes()[index]
  lbar = np.sum(sizes * table[index]) / np.sum(sizes)
  factors = np.clip(table[index] / lbar, 1.0, 3.0)
  step_seconds = np.array([scheduler.step_seconds(c) for c in candidates])
  comm = scheduler.comm_seconds[index]
  limit = np.floor((base.plan.deadline_seconds - comm) / step_seconds)
  kept = base.plan.kept
  want = np.where(kept, np.maximum(
      base.plan.steps, np.minimum(np.ceil(factors * base.plan.steps), limit)),
                  0)
  np.testing.assert_array_equal(scheduled.plan.steps, want)
  assert np.any(scheduled.plan.steps > base.plan.steps)
  seconds = clock.client_seconds(scheduled.plan.steps, step_seconds, comm)
  assert np.all(seconds[kept] <= base.plan.deadline_seconds + 1e-9)
  assert scheduled.plan.round_seconds == pytest.approx(
      max(base.plan.round_seconds, seconds[kept].max()))
  row = scheduler.finish_round(1, scheduled, {})
  assert row['feedback/num_boosted'] == np.sum(scheduled.plan.steps
                                               > base.plan.steps)
  assert row['selection/evaluation_seconds'] >= 0
  kept_index = np.array(index)[kept]
  np.testing.assert_array_equal(scheduler.records.last_round[kept_index], 1)
  np.testing.assert_array_equal(scheduler.records.last_loss[kept_index],
                                table[kept_index])
  np.testing.assert_allclose(scheduler.records.last_seconds[kept_index],
                             seconds[kept])
  assert scheduler.records.participations.sum() == kept.sum()


def test_state_round_trips_the_records(task, tmp_path):
  config = _config(tmp_path,
                   config_lib.SelectionConfig(client_selection='oort'))
  table = np.arange(10, dtype=np.float64)
  scheduler = selecting.SelectingScheduler(task, config,
                                           losses=_table_losses(table))
  for round_num in (1, 2):
    scheduled = scheduler.plan(round_num, scheduler.sample(round_num, 3))
    scheduler.finish_round(round_num, scheduled, {})
  resumed = selecting.SelectingScheduler(task, config,
                                         losses=_table_losses(table))
  resumed.restore(scheduler.state())
  assert resumed.records == scheduler.records
  assert resumed.elapsed_seconds == scheduler.elapsed_seconds
  assert scheduler.sample(3, 3) == resumed.sample(3, 3)


def test_power_of_choice_evaluates_candidates_and_keeps_the_highest(
    task, tmp_path):
  config = _config(tmp_path, config_lib.SelectionConfig(
      client_selection='power_of_choice', poc_candidates=10))
  table = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0, 5.5, 3.5])
  scheduler = selecting.SelectingScheduler(task, config,
                                           losses=_table_losses(table))
  chosen = scheduler.sample(1, 3)
  assert [task.train_data.client_index(c) for c in chosen] == [5, 7, 8]
  row = scheduler.finish_round(1, scheduler.plan(1, chosen), {})
  assert row['selection/candidates'] == 10
  # Every candidate's loss is recorded; only the chosen took part.
  np.testing.assert_array_equal(scheduler.records.last_loss, table)
  assert scheduler.records.participations.tolist() == [
      0, 0, 0, 0, 0, 1, 0, 1, 1, 0]


def test_selection_settings_that_cannot_work(task, tmp_path):
  with pytest.raises(errors.UsageError, match='--client_selection=.best.'):
    selecting.build(task, _config(tmp_path, config_lib.SelectionConfig(
        client_selection='best')))
  with pytest.raises(errors.UsageError,
                     match=r'--poc_candidates=3 must be at least the 4'):
    _config(tmp_path, config_lib.SelectionConfig(
        client_selection='power_of_choice', poc_candidates=3),
            round_policy='deadline_drop', deadline_seconds=1.0)
  with pytest.raises(errors.UsageError, match='--feedback .*fedsgd'):
    config_lib.TrainingConfig(
        experiment_name='x', root_output_dir='/tmp/x', algorithm='fedsgd',
        scheduling=config_lib.SchedulingConfig(
            feedback=config_lib.FeedbackConfig(feedback=True)))


def test_a_run_with_oort_and_feedback_resumes_as_it_ran(task, tmp_path,
                                                        tff_runtime):
  """Records are program state: 4 rounds straight equal 2 + resume + 2."""
  config = _config(
      tmp_path / 'straight',
      config_lib.SelectionConfig(client_selection='oort'),
      config_lib.FeedbackConfig(feedback=True),
      round_policy='deadline_partial', device_profile='lognormal',
      deadline_quantile=0.8, device_gflops=1e-6)
  algorithm = loop.build_algorithm(task, config)
  straight = loop.run_federated(task, config, algorithm=algorithm,
                                runtime=tff_runtime, progress=False)
  first = config_lib.dataclasses.replace(
      config, root_output_dir=str(tmp_path / 'resumed'), total_rounds=2)
  loop.run_federated(task, first, algorithm=algorithm, runtime=tff_runtime,
                     progress=False)
  second = config_lib.dataclasses.replace(first, total_rounds=4)
  resumed = loop.run_federated(task, second, algorithm=algorithm,
                               runtime=tff_runtime, progress=False)
  assert resumed.summary['resumed_from_round'] == 2
  for a, b in zip(straight.final_weights, resumed.final_weights):
    np.testing.assert_array_equal(a, b)
  timing = ('round_seconds', 'selection/evaluation_seconds')
  for a, b in zip(straight.history, resumed.history):
    # assert_equal: NaN equals NaN (no client exploited yet).
    np.testing.assert_equal(
        {k: v for k, v in a.items()
         if k not in timing and not k.startswith('memory/')},
        {k: v for k, v in b.items()
         if k not in timing and not k.startswith('memory/')})
  assert any(row['feedback/num_boosted'] > 0 for row in straight.history)
  assert straight.history[-1]['selection/explored'] >= 0
