"""Width assignment (HeteroFL): the policies against hand-computed times, the
sub-models' costs against `width.parameter_count` and `flops.train_flops`,
and the scheduler's plan and bytes for a task of the paper 2NN."""

import dataclasses

import numpy as np
import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import heterogeneity
from tff_pipeline import models
from tff_pipeline import tasks
from tff_pipeline.models import flops
from tff_pipeline.data import regression
from tff_pipeline.models import width
from tff_pipeline.scheduling import clock
from tff_pipeline.scheduling import scheduler as scheduler_lib
from tff_pipeline.scheduling import widths

WIDTHS = (1.0, 0.5, 0.25, 0.125, 0.0625)
# The regression `task` fixture's shards (a linear model: no hidden layer).
SPEC = regression.RegressionSpec(num_clients=4, examples_per_client=10,
                                 noise_std=0.1, size_exponent=0.0, seed=1)


def _request(full_steps, step_seconds, comm_seconds, deadline):
  return widths.WidthRequest(
      client_indices=np.arange(len(full_steps)),
      full_steps=np.asarray(full_steps, np.int64),
      step_seconds=np.asarray(step_seconds, np.float64),
      comm_seconds=np.asarray(comm_seconds, np.float64),
      deadline_seconds=deadline)


def test_capacity_takes_the_widest_width_that_fits_else_the_narrowest():
  # Three widths; per-step seconds halve with the width, comm is 1 s.
  step = np.array([[1.0, 0.5, 0.25]] * 4)
  comm = np.ones((4, 3))
  # Full work: 10 steps -> 11, 6, 3.5 s; 4 steps -> 5, 3, 2 s; 0 steps -> 1.
  request = _request([10, 10, 4, 0], step * [[1], [3], [1], [1]], comm,
                     deadline=6.0)
  # Client 1 is 3x slower: 31, 16, 8.5 s -> nothing fits -> the narrowest.
  assert widths.WIDTH_POLICIES.get('capacity').assign(request).tolist() == [
      1, 2, 0, 0]
  # A deadline exactly on a time fits (<=).
  assert widths.WIDTH_POLICIES.get('capacity').assign(
      dataclasses.replace(request, deadline_seconds=11.0)).tolist() == [
          0, 2, 0, 0]


def test_mix_assignment_gives_each_width_its_count_from_the_seed():
  a = widths.mix_assignment(7, (3, 0, 5, 2), 10)
  assert np.bincount(a, minlength=4).tolist() == [3, 0, 5, 2]
  np.testing.assert_array_equal(a, widths.mix_assignment(7, (3, 0, 5, 2), 10))
  assert not np.array_equal(a, widths.mix_assignment(8, (3, 0, 5, 2), 10))
  # Not the partition's order: the first three clients are not all width 0.
  assert widths.mix_assignment(0, (5, 5), 10).tolist() != [0] * 5 + [1] * 5
  with pytest.raises(ValueError):
    widths.mix_assignment(0, (5, 4), 10)


def _config(round_policy='deadline_partial', **width_settings):
  return config_lib.TrainingConfig(
      experiment_name='w', root_output_dir='/nonexistent',
      clients_per_round=4, client_batch_size=50,
      client_epochs_per_round=2, seed=3,
      heterogeneity=heterogeneity.ComputeHeterogeneity(
          capacity_profile='minority', slow_client_fraction=0.5,
          min_capacity=0.1),
      scheduling=config_lib.SchedulingConfig(
          round_policy=round_policy, deadline_quantile=0.5),
      model_width=config_lib.ModelWidthConfig(**width_settings))


@pytest.fixture(scope='module')
def mnist_task(mnist_arrays):
  small = dataclasses.replace(mnist_arrays,
                              train_x=mnist_arrays.train_x[:1000],
                              train_y=mnist_arrays.train_y[:1000],
                              test_x=mnist_arrays.test_x[:200],
                              test_y=mnist_arrays.test_y[:200])
  return tasks.build_mnist_task(
      tasks.MnistTaskSpec(model='2nn', num_clients=10, seed=3), small)


def test_costs_are_the_sub_models(mnist_task):
  scheduler = scheduler_lib.Scheduler(
      mnist_task, _config(model_width_policy='capacity'))
  costs = scheduler.width_costs
  spec = width.spec_of(models.build_2nn(3))
  assert costs.widths == WIDTHS
  for j, w in enumerate(WIDTHS):
    count = width.parameter_count(spec, w)
    assert costs.parameters[j] == count
    assert costs.broadcast_bytes[j] == 4 * count
    assert costs.upload_bytes[j] == 4 * count + 4  # and the weight
    assert costs.flops_per_example[j] == flops.train_flops(
        models.build_2nn(3, width=w))['train_per_example']
  assert costs.parameters[0] == scheduler.payload.upload_values - 1
  facts = costs.facts()
  assert facts['0.0625']['parameters'] == 10_527
  assert list(facts) == ['1', '0.5', '0.25', '0.125', '0.0625']


def test_capacity_plan_is_the_clock_at_each_clients_width(mnist_task):
  scheduler = scheduler_lib.Scheduler(
      mnist_task, _config(model_width_policy='capacity'))
  costs = scheduler.width_costs
  clients = list(mnist_task.train_data.client_ids)
  scheduled = scheduler.plan(1, clients[:6], wanted=6)
  full, _ = scheduler.work(1, clients[:6], 6)
  limit = float(np.quantile(full.full_seconds(), 0.5))
  assert scheduled.plan.deadline_seconds == limit
  chosen = scheduled.width_indices
  for k, cid in enumerate(clients[:6]):
    index = mnist_task.train_data.client_index(cid)
    devices = scheduler.devices
    times = [full.full_steps[k] * scheduler.step_seconds(cid, f)
             + clock.communication_seconds(
                 b, u, devices.down_mbps[index], devices.up_mbps[index])
             for f, b, u in zip(costs.flops_per_example,
                                costs.broadcast_bytes, costs.upload_bytes)]
    fits = [j for j, t in enumerate(times) if t <= limit]
    assert chosen[k] == (fits[0] if fits else len(WIDTHS) - 1)
    if scheduled.plan.kept[k]:
      assert scheduled.plan.seconds[k] == pytest.approx(
          scheduled.plan.steps[k] * scheduler.step_seconds(
              cid, costs.flops_per_example[chosen[k]])
          + times[chosen[k]] - full.full_steps[k] * scheduler.step_seconds(
              cid, costs.flops_per_example[chosen[k]]))
  # Slow (minority) clients train narrower sub-models than fast ones.
  slow = np.array([devices.gflops[mnist_task.train_data.client_index(c)]
                   < 1.0 for c in clients[:6]])
  assert slow.any() and (~slow).any()
  assert chosen[slow].min() > chosen[~slow].max()
  assert scheduled.widths == [WIDTHS[j] for j in chosen[scheduled.plan.kept]]
  stats = scheduled.stats()
  kept = scheduled.plan.kept
  assert stats['width/mean_width'] == pytest.approx(
      np.mean(np.asarray(WIDTHS)[chosen[kept]]))
  assert sum(stats[f'width/clients_at_{widths.label(w)}']
             for w in WIDTHS) == kept.sum()
  broadcast, uploaded = scheduler.round_bytes(scheduled)
  assert broadcast == costs.broadcast_bytes[chosen].sum()
  assert uploaded == costs.upload_bytes[chosen[kept]].sum()


def test_without_widths_bytes_are_the_whole_models(mnist_task):
  scheduler = scheduler_lib.Scheduler(mnist_task, _config())
  assert scheduler.width_costs is None
  scheduled = scheduler.plan(1, list(mnist_task.train_data.client_ids)[:4])
  assert scheduled.widths is None and scheduled.width_indices is None
  assert not any(k.startswith('width/') for k in scheduled.stats())
  assert scheduler.round_bytes(scheduled) == (
      4 * scheduler.payload.broadcast_bytes,
      scheduled.plan.kept.sum() * scheduler.payload.upload_bytes)


def test_mix_gives_each_client_its_fixed_width(mnist_task):
  scheduler = scheduler_lib.Scheduler(mnist_task, _config(
      model_width_policy='mix', model_width_mix=('4', '0', '3', '3', '0')))
  clients = list(mnist_task.train_data.client_ids)
  fixed = widths.mix_assignment(3, (4, 0, 3, 3, 0), 10)
  for round_num in (1, 2):
    scheduled = scheduler.plan(round_num, clients[3:9], wanted=6)
    assert scheduled.width_indices.tolist() == [
        fixed[mnist_task.train_data.client_index(c)] for c in clients[3:9]]


def test_a_task_without_hidden_layers_is_refused(task):
  with pytest.raises(errors.UsageError,
                     match='--model_width_policy=capacity needs a model with '
                     'hidden layers'):
    scheduler_lib.Scheduler(task, _config(model_width_policy='capacity'))




def test_capacity_with_deadline_drop_keeps_the_first_to_finish_at_their_widths(
    mnist_task):
  """deadline_drop samples ceil(1.3 m); widths fit the whole model's
  deadline; the first m to finish at their widths by it are kept."""
  scheduler = scheduler_lib.Scheduler(
      mnist_task, _config('deadline_drop', model_width_policy='capacity'))
  clients = scheduler.sample(1, 4)
  assert len(clients) == 6
  scheduled = scheduler.plan(1, clients)
  full, _ = scheduler.work(1, clients, 4)
  limit = float(np.quantile(full.full_seconds(), 0.5))
  assert scheduled.plan.deadline_seconds == limit
  kept = scheduled.plan.kept
  assert 1 <= kept.sum() <= 4
  assert (scheduled.plan.steps[kept] == full.full_steps[kept]).all()
  assert (scheduled.plan.seconds[kept] <= limit).all() or (
      scheduled.plan.deadline_missed)
  # A narrower width only where the whole model would miss the deadline.
  narrow = scheduled.width_indices > 0
  assert (full.full_seconds()[narrow] > limit).all()


@pytest.mark.parametrize('mix', [(10.5, 9.5), ('10', 'ten'), (True, 19)])
def test_a_mix_of_non_whole_counts_is_refused(mix):
  with pytest.raises(errors.UsageError,
                     match='--model_width_mix=.* must be a list of client '
                     'counts'):
    config_lib.ModelWidthConfig(model_width_policy='mix',
                                model_widths=(1.0, 0.5), model_width_mix=mix)
