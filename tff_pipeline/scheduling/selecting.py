"""A scheduler that selects clients by loss and speed and feeds back.

`scheduler.Scheduler` samples uniformly and plans the round policy's work.
`SelectingScheduler` adds what `--client_selection` and `--feedback` need
(docs/selection.md):

  * `select` (given the global model) asks the registered selector (`selection.py`) for the round's
    candidates, from the server's per-client records (`records.py`), the
    clients' data sizes, their devices' expected full-work seconds, and,
    for `power_of_choice`, the current global model's loss on each
    candidate's data;
  * `plan` measures the loss of the round's clients before training (with
    `oort` or `--feedback`) and, with `--feedback`, gives lagging clients
    more local steps within what their device can run by the deadline
    (`feedback.py`);
  * `finish_round` records what the round measured: each client's loss,
    its participation and its simulated seconds;
  * `state` / `restore` add the records to the clock's checkpointed state,
    so a resumed run selects and feeds back as an uninterrupted one.

The server's loss evaluation (`client_losses.py`) stands in for
clients reporting their loss; its wall-clock time is the CSV column
`selection/evaluation_seconds`, apart from the round's other costs.

`build` returns a plain `Scheduler` when neither is on, so default runs (and
their checkpoints) are exactly the clock's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import tasks as tasks_lib
from tff_pipeline.scheduling import clock
from tff_pipeline.scheduling import feedback as feedback_lib
from tff_pipeline.scheduling import records as records_lib
from tff_pipeline.scheduling import scheduler as scheduler_lib
from tff_pipeline.scheduling import selection
from tff_pipeline.scheduling import client_losses

# Selectors that read the records' losses: the round's clients are evaluated
# before training so that the records hold them.
_READS_LOSSES = frozenset({'oort'})


def build(task: tasks_lib.Task, config: config_lib.TrainingConfig
          ) -> scheduler_lib.Scheduler:
  """The run's scheduler: a `SelectingScheduler` when selection is not
  uniform or `--feedback` is on, else the clock's `Scheduler`."""
  s = config.scheduling
  selection.SELECTORS.get(s.selection.client_selection)  # A bad name fails.
  if s.selection.client_selection == 'uniform' and not s.feedback.feedback:
    return scheduler_lib.Scheduler(task, config)
  return SelectingScheduler(task, config)


class SelectingScheduler(scheduler_lib.Scheduler):
  """`Scheduler` with client selection, feedback and per-client records.

  Args:
    task: The task (its clients, their data and model).
    config: The run's settings.
    losses: (weights, round) -> losses of that model on clients' data;
      defaults to the server's evaluation (`client_losses.ClientLosses`).
  """

  def __init__(
      self,
      task: tasks_lib.Task,
      config: config_lib.TrainingConfig,
      losses: Callable[[Sequence[np.ndarray], int], selection.LossesFn]
      | None = None,
  ):
    super().__init__(task, config)
    self._selection = config.scheduling.selection
    self._feedback = config.scheduling.feedback
    self._losses_of = losses or client_losses.evaluator(
        task, max_examples=self._selection.selection_loss_examples,
        seed=config.seed)
    data = task.train_data
    self.num_examples = np.asarray(data.client_sizes(), np.int64)
    full_steps = np.array(
        [task.steps_per_epoch(cid, config.client_batch_size)
         * config.client_epochs_per_round for cid in self.client_ids])
    step_seconds = np.array([self.step_seconds(cid)
                             for cid in self.client_ids])
    self.full_work_seconds = clock.client_seconds(full_steps, step_seconds,
                                                  self.comm_seconds)
    self.records = records_lib.ClientRecords.new(len(self.client_ids))
    self._index = {cid: k for k, cid in enumerate(self.client_ids)}
    self._round_losses: selection.LossesFn | None = None
    self._measured: dict[int, float] = {}
    self._evaluation_seconds = 0.0
    self._facts: dict[str, float] = {}

  # --- the round's global model ----------------------------------------------

  def _start_round(self, round_num: int,
                   weights: Sequence[np.ndarray] | None) -> None:
    """The global model round `round_num` starts from (losses are of it)."""
    self._round_losses = self._losses_of(weights, round_num)
    self._measured = {}
    self._evaluation_seconds = 0.0
    self._facts = {}

  def _losses(self, indices: np.ndarray) -> np.ndarray:
    if self._round_losses is None:
      raise RuntimeError('select must run before a round is planned')
    start = time.perf_counter()
    losses = np.asarray(self._round_losses(indices), np.float64)
    self._evaluation_seconds += time.perf_counter() - start
    self._measured.update(zip(np.asarray(indices).tolist(), losses.tolist()))
    return losses

  def _population(self) -> selection.Population:
    return selection.Population(
        client_ids=self.client_ids, num_examples=self.num_examples,
        full_work_seconds=self.full_work_seconds, records=self.records,
        losses=self._losses)

  # --- which clients ---------------------------------------------------------

  def select(self, round_num: int, size: int,
             weights: Sequence[np.ndarray] | None = None) -> list[str]:
    """The round's candidates, as `--client_selection` chooses them.

    Args:
      round_num: 1-based.
      size: How many.
      weights: The global model before the round; the losses the round
        measures are of it (required when a loss is needed).
    """
    self._start_round(round_num, weights)
    population = self._population()
    chosen = selection.select(self._selection, self.config.seed, round_num,
                              size, population)
    self._facts.update(chosen.facts)
    return chosen.client_ids(population)

  # --- how much work ---------------------------------------------------------

  def plan(self, round_num: int, client_ids: Sequence[str],
           wanted: int | None = None) -> scheduler_lib.ScheduledRound:
    scheduled = super().plan(round_num, client_ids, wanted)
    kept = np.flatnonzero(scheduled.plan.kept)
    indices = np.array([self._index[client_ids[k]] for k in kept], np.int64)
    losses = None
    if (self._selection.client_selection in _READS_LOSSES
        or self._feedback.feedback):
      losses = self._losses(indices)
    if not self._feedback.feedback:
      return scheduled
    plan = scheduled.plan
    step_seconds = np.array([self.step_seconds(client_ids[k]) for k in kept])
    comm_seconds = self.comm_seconds[indices]
    bound = (plan.deadline_seconds if plan.deadline_seconds is not None
             else plan.round_seconds)
    result = feedback_lib.apply(
        self._feedback, self.records, self.num_examples, indices,
        planned_steps=plan.steps[kept],
        max_steps=feedback_lib.steps_that_fit(bound, step_seconds,
                                              comm_seconds),
        client_losses=losses)
    self._facts.update(result.facts)
    steps = plan.steps.copy()
    seconds = plan.seconds.copy()
    steps[kept] = result.local_steps
    seconds[kept] = clock.client_seconds(result.local_steps, step_seconds,
                                         comm_seconds)
    round_seconds = max(plan.round_seconds, float(seconds[kept].max(
        initial=0.0)))
    return dataclasses.replace(scheduled, plan=dataclasses.replace(
        plan, steps=steps, seconds=seconds, round_seconds=round_seconds))

  # --- what the round measured -----------------------------------------------

  def finish_round(self, round_num: int,
                   scheduled: scheduler_lib.ScheduledRound,
                   row: Mapping[str, float],
                   weights: Sequence[np.ndarray] | None = None
                   ) -> dict[str, float]:
    out = super().finish_round(round_num, scheduled, row, weights)
    kept = np.flatnonzero(scheduled.plan.kept)
    indices = np.array(
        [self._index[scheduled.candidates[k]] for k in kept], np.int64)
    records = self.records
    known = self._measured
    if known:
      # Every loss measured this round, also of candidates that did not
      # train (power of choice), is the freshest the server has.
      records = records.with_losses(list(known), list(known.values()))
    self.records = records.updated(round_num, indices,
                                   seconds=scheduled.plan.seconds[kept])
    out.update(self._facts)
    if known or self._selection.client_selection == 'power_of_choice':
      out['selection/evaluation_seconds'] = self._evaluation_seconds
    return out

  # --- program state ---------------------------------------------------------

  def state(self) -> dict[str, Any]:
    return {**super().state(), **self.records.to_arrays()}

  def restore(self, state: Mapping[str, Any]) -> None:
    super().restore(state)
    self.records = records_lib.ClientRecords.from_arrays(
        state, len(self.client_ids))
