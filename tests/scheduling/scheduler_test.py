"""The scheduler in the loop: today's FedAvg bitwise, plans from the task,
the clock's columns and its state across a resume."""

import dataclasses

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import heterogeneity
from tff_pipeline.data import regression
from tff_pipeline.scheduling import clock
from tff_pipeline.scheduling import scheduler as scheduler_lib
from tff_pipeline.training import loop
from tff_pipeline.training import recorder

SPEC = regression.RegressionSpec(num_clients=8, examples_per_client=20,
                                 noise_std=0.3, size_exponent=1.0, seed=3)


def _config(tmp_path, **scheduling):
  return config_lib.TrainingConfig(
      experiment_name='exp', root_output_dir=str(tmp_path), total_rounds=4,
      clients_per_round=4, client_batch_size=4, client_epochs_per_round=2,
      client_optimizer=config_lib.OptimizerConfig(learning_rate=0.05),
      rounds_per_checkpoint=2, seed=5,
      scheduling=config_lib.SchedulingConfig(**scheduling))


@pytest.fixture(scope='module')
def algorithm(task, tmp_path_factory, tff_runtime):
  del tff_runtime
  return loop.build_algorithm(task, _config(tmp_path_factory.mktemp('p')))


def _todays_fedavg(task, config, algorithm, rounds):
  """FedAvg as the loop ran it before simulated time: TFF's uniform
  sampler, every client's full E epochs, `process.next`."""
  sample = tff.simulation.build_uniform_sampling_fn(
      task.train_data.client_ids, replace=False, random_seed=config.seed)
  state = algorithm.process.initialize()
  for round_num in range(1, rounds + 1):
    sampled = list(sample(round_num, config.clients_per_round))
    steps = [config.client_epochs_per_round
             * task.steps_per_epoch(c, config.client_batch_size)
             for c in sampled]
    inputs, _ = loop.client_inputs(task, config, algorithm, round_num,
                                   sampled, steps)
    state = algorithm.process.next(state, inputs).state
  return list(state.global_model_weights.trainable)


@pytest.mark.parametrize('policy', ['wait_all', 'budgets'])
def test_equal_devices_and_uniform_selection_are_todays_fedavg(
    task, algorithm, tmp_path, tff_runtime, policy):
  """Issue acceptance: with equal devices, `wait_all` (and the default
  `budgets`) with uniform selection give today's FedAvg weights bitwise."""
  config = _config(tmp_path, round_policy=policy)
  result = loop.run_federated(task, config, algorithm=algorithm,
                              runtime=tff_runtime, progress=False)
  expected = _todays_fedavg(task, config, algorithm, 4)
  for got, want in zip(result.final_weights, expected):
    np.testing.assert_array_equal(got, want)
  assert all(row['time/clients_dropped'] == 0 for row in result.history)


def test_plan_times_follow_the_clock(task, shards, tmp_path):
  config = _config(tmp_path, round_policy='wait_all', device_gflops=0.002,
                   up_bandwidth_mbps=0.5, down_bandwidth_mbps=2.0)
  scheduler = scheduler_lib.Scheduler(task, config)
  # The linear model is one dense layer, features -> 1: 2 * d FLOPs forward,
  # 3x that to train.
  assert scheduler.flops_per_example == 3 * 2 * shards.x.shape[1]
  candidates = scheduler.sample(3, 4)
  assert candidates == list(tff.simulation.build_uniform_sampling_fn(
      task.train_data.client_ids, replace=False, random_seed=5)(3, 4))
  scheduled = scheduler.plan(3, candidates)
  payload = scheduler.payload
  for cid, seconds, steps in zip(candidates, scheduled.plan.seconds,
                                 scheduled.plan.steps):
    n = task.train_data.num_examples(cid)
    spe = -(-n // 4)
    assert steps == 2 * spe
    # Python reference: the epoch's FLOPs over its steps, per step.
    compute = steps * (n / spe) * scheduler.flops_per_example / 0.002e9
    comm = (payload.broadcast_bytes / (2.0e6 / 8)
            + payload.upload_bytes / (0.5e6 / 8))
    assert seconds == pytest.approx(compute + comm, rel=1e-12)
  assert scheduled.plan.round_seconds == max(scheduled.plan.seconds)
  assert scheduled.stats()['time/round_seconds'] == max(
      scheduled.plan.seconds)


def test_deadline_drop_trains_the_first_finishers(task, algorithm, tmp_path,
                                                  tff_runtime):
  config = dataclasses.replace(
      _config(tmp_path, round_policy='deadline_drop', deadline_quantile=0.5,
              oversample_factor=1.5),
      heterogeneity=heterogeneity.ComputeHeterogeneity(
          capacity_profile='uniform', min_capacity=0.1))
  scheduler = scheduler_lib.Scheduler(task, config)
  result = loop.run_round(task, config, algorithm,
                          algorithm.process.initialize(), 2, scheduler)
  scheduled = result.scheduled
  assert len(scheduled.candidates) == 6  # ceil(1.5 * 4)
  full = scheduled.plan.seconds
  deadline = np.quantile(full, 0.5)
  finishers = [c for _, c in sorted(zip(full, scheduled.candidates))
               if _ <= deadline][:4]
  assert sorted(result.client_ids) == sorted(finishers)
  assert result.row['time/clients_dropped'] == 6 - len(finishers)
  assert result.row['time/deadline_seconds'] == deadline
  assert result.row['client_work/train/num_examples'] == sum(
      2 * task.train_data.num_examples(c) for c in result.client_ids)


def test_deadline_partial_run_resumes_with_its_clock(task, algorithm,
                                                     tmp_path, tff_runtime):
  config = dataclasses.replace(
      _config(tmp_path / 'a', round_policy='deadline_partial',
              deadline_quantile=0.3),
      heterogeneity=heterogeneity.ComputeHeterogeneity(
          capacity_profile='uniform', min_capacity=0.1))
  straight = loop.run_federated(task, config, algorithm=algorithm,
                                runtime=tff_runtime, progress=False)
  elapsed = np.cumsum([r['time/round_seconds'] for r in straight.history])
  np.testing.assert_allclose(
      [r['time/elapsed_seconds'] for r in straight.history], elapsed,
      rtol=1e-15)
  assert straight.summary['simulated_seconds'] == (
      straight.history[-1]['time/elapsed_seconds'])
  assert any(r['compute/min_local_steps'] < r['compute/max_local_steps']
             for r in straight.history)

  class Crash(Exception):
    pass

  def crash_after_round_3(round_num, row):
    del row
    if round_num == 3:
      raise Crash()

  crashed = dataclasses.replace(config, root_output_dir=str(tmp_path / 'b'))
  with pytest.raises(Crash):
    loop.run_federated(task, crashed, algorithm=algorithm,
                       runtime=tff_runtime, progress=False,
                       on_round_end=crash_after_round_3)
  resumed = loop.run_federated(task, crashed, algorithm=algorithm,
                               runtime=tff_runtime, progress=False)
  assert resumed.summary['resumed_from_round'] == 2
  assert resumed.summary['simulated_seconds'] == (
      straight.summary['simulated_seconds'])
  for a, b in zip(straight.final_weights, resumed.final_weights):
    np.testing.assert_array_equal(a, b)


def test_simulated_time_summary_finds_the_first_round_at_target():
  history = [
      {'round_num': 1.0, 'time/elapsed_seconds': 5.0},
      {'round_num': 2.0, 'time/elapsed_seconds': 9.0, 'eval/accuracy': 0.9},
      {'round_num': 3.0, 'time/elapsed_seconds': 12.0, 'eval/accuracy': 0.96},
      {'round_num': 4.0, 'time/elapsed_seconds': 20.0, 'eval/accuracy': 0.97},
  ]
  assert recorder.simulated_time_summary(history, 20.0, 0.95) == {
      'simulated_seconds': 20.0, 'target_accuracy': 0.95,
      'rounds_to_target': 3, 'simulated_seconds_to_target': 12.0}
  assert recorder.simulated_time_summary(history, 20.0, 0.99) == {
      'simulated_seconds': 20.0, 'target_accuracy': 0.99,
      'rounds_to_target': None, 'simulated_seconds_to_target': None}
  assert recorder.simulated_time_summary(history, 20.0, 0.0) == {
      'simulated_seconds': 20.0}


def test_communication_seconds_use_the_payload(task, tmp_path):
  scheduler = scheduler_lib.Scheduler(task, _config(tmp_path))
  np.testing.assert_allclose(
      scheduler.comm_seconds,
      clock.communication_seconds(scheduler.payload.broadcast_bytes,
                                  scheduler.payload.upload_bytes, 20.0, 5.0))
