"""The seam between the training loop and simulated time.

`training/loop.run_round` asks a `Scheduler` two things each round:

  1. `sample(round_num, wanted)`: the round's candidate clients. The policy
     says how many (`deadline_drop` over-samples); `select` says which
     (uniformly without replacement, `tff.simulation.build_uniform_sampling_fn`,
     a pure function of (seed, round): today's sampling). Client selectors
     replace `select`.
  2. `plan(round_num, client_ids)`: each candidate's local steps, whether it
     is kept, its simulated seconds and the round's duration, from its device
     (`devices.py`), the clock (`clock.py`) and the round policy
     (`policies.py`).

After a finite round the loop calls `finish_round`, which advances the clock.
The clock is program state: `state()` is saved in each checkpoint next to the
learning process's state, and `restore()` puts it back on resume, so a
resumed run reports the same simulated times as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_federated as tff

from tff_pipeline import aggregators
from tff_pipeline import config as config_lib
from tff_pipeline import tasks as tasks_lib
from tff_pipeline.aggregators import communication
from tff_pipeline.models import flops
from tff_pipeline.scheduling import clock
from tff_pipeline.scheduling import devices as devices_lib
from tff_pipeline.scheduling import policies
from tff_pipeline.scheduling import widths as widths_lib


@dataclasses.dataclass(frozen=True)
class ScheduledRound:
  """A round as the scheduler planned it.

  Attributes:
    candidates: The sampled clients, in sampling order.
    plan: The policy's decision for each candidate.
    stragglers: Candidates that straggle this round (`--straggler_fraction`,
      only under the `budgets` policy).
    minority_share: Share of the trained clients in the slow minority, or
      None without a minority.
    width_indices: Each candidate's width, as an index into
      `width_costs.widths`; None when every client trains the whole model.
    width_costs: The run's widths and their costs, or None.
  """

  candidates: list[str]
  plan: policies.RoundPlan
  stragglers: int
  minority_share: float | None
  width_indices: np.ndarray | None = None
  width_costs: widths_lib.WidthCosts | None = None

  @property
  def client_ids(self) -> list[str]:
    """The clients that train, in sampling order."""
    return [c for c, kept in zip(self.candidates, self.plan.kept) if kept]

  @property
  def steps(self) -> list[int]:
    """Local steps of each client that trains (`client_ids` order)."""
    return [int(s) for s, kept in zip(self.plan.steps, self.plan.kept)
            if kept]

  @property
  def widths(self) -> list[float] | None:
    """The width of each client that trains (`client_ids` order), or None
    when every client trains the whole model."""
    if self.width_indices is None:
      return None
    return [self.width_costs.widths[j] for j in
            self.width_indices[self.plan.kept]]

  def stats(self) -> dict[str, float]:
    """The round's `time/` columns (docs/outputs.md) and straggler count."""
    row = {
        'compute/num_stragglers': float(self.stragglers),
        'time/round_seconds': self.plan.round_seconds,
        'time/clients_sampled': float(len(self.candidates)),
        'time/clients_dropped': float(self.plan.num_dropped),
    }
    if self.plan.deadline_seconds is not None:
      row['time/deadline_seconds'] = self.plan.deadline_seconds
      row['time/deadline_missed'] = float(self.plan.deadline_missed)
    if self.minority_share is not None:
      row['time/minority_share'] = self.minority_share
    if self.width_indices is not None:
      row.update(widths_lib.round_stats(self.width_costs, self.width_indices,
                                        self.plan.kept))
    return row


class Scheduler:
  """Samples and plans the rounds of one run, and keeps its clock.

  Args:
    task: The task (its clients, their data sizes, its model's FLOPs).
    config: The run's settings (`config.scheduling` above all).
  """

  def __init__(self, task: tasks_lib.Task,
               config: config_lib.TrainingConfig):
    self.task = task
    self.config = config
    self.client_ids = list(task.train_data.client_ids)
    num_clients = len(self.client_ids)
    self.policy = policies.ROUND_POLICIES.get(config.scheduling.round_policy)
    self.deadline = policies.Deadline(config.scheduling.deadline_seconds,
                                      config.scheduling.deadline_quantile)
    self.devices = devices_lib.build_devices(config, num_clients)
    model = task.model_builder()
    self.flops_per_example = float(
        flops.train_flops(model)['train_per_example'])
    self.payload = communication.payload(
        [int(np.prod(w.shape)) for w in model.trainable_weights],
        [int(np.prod(w.shape)) for w in model.non_trainable_weights],
        config, aggregators.COMPRESSION_THRESHOLD)
    self.comm_seconds = clock.communication_seconds(
        self.payload.broadcast_bytes, self.payload.upload_bytes,
        self.devices.down_mbps, self.devices.up_mbps)
    self._init_widths(model)
    minority = devices_lib.minority(config, num_clients)
    self._minority = None if minority is None else frozenset(minority)
    self._uniform = tff.simulation.build_uniform_sampling_fn(
        self.client_ids, replace=False, random_seed=config.seed)
    self.elapsed_seconds = 0.0

  def _init_widths(self, model: Any) -> None:
    """The widths' costs and the policy (HeteroFL), if sub-models train."""
    settings = self.config.model_width
    self.width_policy = widths_lib.WIDTH_POLICIES.get(
        settings.model_width_policy)
    self.width_costs: widths_lib.WidthCosts | None = None
    self.width_spec = None
    if not settings.enabled:
      return
    self.width_spec = widths_lib.task_width_spec(self.task, self.config)
    sub_models = [self.task.model_builder_at_width(w)
                  for w in settings.widths]
    self.width_costs = widths_lib.width_costs(
        settings.widths,
        [[int(np.prod(w.shape)) for w in m.trainable_weights]
         for m in sub_models],
        [int(np.prod(w.shape)) for w in model.non_trainable_weights],
        [float(flops.train_flops(m)['train_per_example'])
         for m in sub_models],
        self.config)
    costs = self.width_costs
    # [clients, widths]: seconds to receive and send each sub-model.
    self.width_comm_seconds = np.stack([
        clock.communication_seconds(b, u, self.devices.down_mbps,
                                    self.devices.up_mbps)
        for b, u in zip(costs.broadcast_bytes, costs.upload_bytes)], axis=1)
    self._fixed_widths = None
    if settings.model_width_policy == 'mix':
      self._fixed_widths = widths_lib.mix_assignment(
          self.config.seed, settings.mix, len(self.client_ids))

  # --- which clients ---------------------------------------------------------

  def sample(self, round_num: int, wanted: int,
             weights: Sequence[np.ndarray] | None = None) -> list[str]:
    """The candidates of a round that trains `wanted` clients.

    Args:
      round_num: 1-based.
      wanted: m, the clients the round trains (`--clients_per_round`).
      weights: The global model's trainable weights (Keras order) before the
        round, for selectors that evaluate it; uniform selection ignores it.
    """
    size = self.policy.sample_size(
        wanted, self.config.scheduling.oversample_factor,
        len(self.client_ids))
    return self.select(round_num, size, weights)

  def select(self, round_num: int, size: int,
             weights: Sequence[np.ndarray] | None = None) -> list[str]:
    """`size` distinct clients, uniformly: a pure function of (seed, round).

    The hook of client selection: a selector overrides this method.
    """
    del weights
    return list(self._uniform(round_num, size))

  # --- how much work, how long ---------------------------------------------

  def step_seconds(self, client_id: str,
                   flops_per_example: float | None = None) -> float:
    """Simulated seconds of one local step of `client_id` on its device.

    An epoch costs FLOPs per example * the client's examples; a step costs
    an epoch's share (so the last, smaller batch is not overcounted).

    Args:
      client_id: The client.
      flops_per_example: Training FLOPs per example of the model it trains;
        the whole model's by default.
    """
    if flops_per_example is None:
      flops_per_example = self.flops_per_example
    index = self.task.train_data.client_index(client_id)
    examples = self.task.train_data.num_examples(client_id)
    steps = self.task.steps_per_epoch(client_id, self.config.client_batch_size)
    per_step = examples / steps if steps else 0.0
    return float(clock.seconds_per_step(per_step * flops_per_example,
                                        self.devices.gflops[index]))

  def work(self, round_num: int, client_ids: Sequence[str],
           wanted: int) -> tuple[policies.RoundWork, int]:
    """The candidates' `RoundWork`, and how many straggle this round."""
    config = self.config
    full, budgets, step_seconds, comm = [], [], [], []
    stragglers = 0
    for cid in client_ids:
      index = self.task.train_data.client_index(cid)
      steps_per_epoch = self.task.steps_per_epoch(cid,
                                                  config.client_batch_size)
      budget, straggler = config.heterogeneity.local_steps(
          config.seed, round_num, index, steps_per_epoch,
          config.client_epochs_per_round,
          num_clients=len(self.client_ids))
      full.append(steps_per_epoch * config.client_epochs_per_round)
      budgets.append(budget)
      stragglers += straggler
      step_seconds.append(self.step_seconds(cid))
      comm.append(self.comm_seconds[index])
    work = policies.RoundWork(
        full_steps=np.array(full, np.int64),
        budget_steps=np.array(budgets, np.int64),
        step_seconds=np.array(step_seconds), comm_seconds=np.array(comm),
        wanted=wanted)
    return work, stragglers

  def plan(self, round_num: int, client_ids: Sequence[str],
           wanted: int | None = None) -> ScheduledRound:
    """What each candidate does in round `round_num`, and for how long.

    Args:
      round_num: 1-based; straggler budgets depend on it.
      client_ids: The candidates (`sample`), in sampling order.
      wanted: How many to train (deadline_drop keeps this many); defaults to
        `--clients_per_round`.
    """
    wanted = self.config.clients_per_round if wanted is None else wanted
    work, stragglers = self.work(round_num, client_ids, wanted)
    deadline, width_indices = self.deadline, None
    if self.width_costs is not None:
      work, deadline, width_indices = self._sized(work, client_ids)
    plan = self.policy.plan(work, deadline)
    share = None
    if self._minority is not None:
      trained = [self.task.train_data.client_index(c)
                 for c, kept in zip(client_ids, plan.kept) if kept]
      share = float(np.mean([k in self._minority for k in trained]))
    return ScheduledRound(candidates=list(client_ids), plan=plan,
                          stragglers=stragglers, minority_share=share,
                          width_indices=width_indices,
                          width_costs=self.width_costs)

  def _sized(self, work: policies.RoundWork, client_ids: Sequence[str]
             ) -> tuple[policies.RoundWork, policies.Deadline, np.ndarray]:
    """The candidates' widths, and their work at those widths.

    The deadline a width must fit (`capacity`) is the one the round policy
    would set for the whole model; the round is then planned with it fixed,
    so a deadline quantile is not recomputed from the sub-models' times.
    """
    costs = self.width_costs
    indices = np.array([self.task.train_data.client_index(c)
                        for c in client_ids], np.int64)
    step_seconds = np.array([[self.step_seconds(c, f)
                              for f in costs.flops_per_example]
                             for c in client_ids]).reshape(
                                 len(client_ids), len(costs.widths))
    deadline = self.deadline
    limit = None
    if self.width_policy.uses_deadline:
      limit = deadline.resolve(work.full_seconds())
      deadline = policies.Deadline(seconds=limit)
    chosen = self.width_policy.assign(widths_lib.WidthRequest(
        client_indices=indices, full_steps=work.full_steps,
        step_seconds=step_seconds,
        comm_seconds=self.width_comm_seconds[indices],
        deadline_seconds=limit, fixed=self._fixed_widths))
    rows = np.arange(len(client_ids))
    sized = dataclasses.replace(
        work, step_seconds=step_seconds[rows, chosen],
        comm_seconds=self.width_comm_seconds[indices, chosen])
    return sized, deadline, chosen

  def round_bytes(self, scheduled: ScheduledRound) -> tuple[float, float]:
    """(bytes broadcast, bytes uploaded) in a round.

    Every candidate receives the model (its sub-model); only the kept ones
    upload.
    """
    kept = scheduled.plan.kept
    if scheduled.width_indices is None:
      return (float(self.payload.broadcast_bytes * len(scheduled.candidates)),
              float(self.payload.upload_bytes * int(np.sum(kept))))
    chosen = scheduled.width_indices
    costs = self.width_costs
    return (float(np.sum(costs.broadcast_bytes[chosen])),
            float(np.sum(costs.upload_bytes[chosen[kept]])))

  # --- the clock, as program state -------------------------------------------

  def finish_round(
      self, round_num: int, scheduled: ScheduledRound,
      row: Mapping[str, float],
      weights: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Advances the clock by a finished round; returns the columns to add.

    Args:
      round_num: The round that finished.
      scheduled: Its plan.
      row: Its metrics row (what the clients reported), for schedulers that
        learn from it.
      weights: The new global model's trainable weights (Keras order).
    """
    del round_num, row, weights
    self.elapsed_seconds += scheduled.plan.round_seconds
    return {'time/elapsed_seconds': self.elapsed_seconds}

  def state(self) -> dict[str, Any]:
    """What a checkpoint must hold to resume the clock (NumPy values)."""
    return {'elapsed_seconds': np.float64(self.elapsed_seconds)}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Resumes from a `state()` read back from a checkpoint."""
    self.elapsed_seconds = float(state['elapsed_seconds'])
