"""Round policies: which sampled clients train, how many steps, how long.

A policy turns what the sampled clients would do (their full local work,
their device's seconds per step and communication seconds, `RoundWork`) into
a `RoundPlan`: the local steps of each client (0 = dropped) and the round's
simulated duration. Pure NumPy; `scheduler.Scheduler` applies it each round.

  * `budgets` (the default): today's local-step budgets, as
    `--capacity_profile` and `--straggler_fraction` set them (a low-capacity
    client runs fewer steps); every client is waited for, and the clock only
    measures. With no heterogeneity every budget is the full work, so this is
    exactly `wait_all`.
  * `wait_all`: every sampled client does its full work (E epochs); the round
    lasts until the slowest finishes.
  * `deadline_drop`: over-sample ceil(f * m) clients (f =
    `--oversample_factor`, 1.3 in FedScale and Oort), each doing full work;
    keep the first m to finish by the deadline and drop the others; the
    round lasts until the m-th finish, or the deadline if fewer finish (FedCS,
    Nishio & Yonetani, ICC 2019; FedScale).
  * `deadline_partial`: each sampled client runs the local steps that fit
    before the deadline (at most its full work); a client that cannot finish
    even one step (with its communication) is dropped: one step is the least
    work that still sends an update worth its upload. The round lasts until
    the last kept client finishes (at most the deadline). Normalised
    aggregation (FedNova, Wang et al., NeurIPS 2020) keeps each client's
    weight in the objective unchanged under such partial work.

The deadline is `--deadline_seconds`, or the `--deadline_quantile` quantile
(linear interpolation) of the sampled clients' full-work times. A round
always trains someone: if no client meets the deadline, the round keeps the
one that finishes first (its full work under `deadline_drop`, one step under
`deadline_partial`) and lasts until it is done; `RoundPlan.deadline_missed`
says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from tff_pipeline import registry
from tff_pipeline.scheduling import clock


@dataclasses.dataclass(frozen=True)
class RoundWork:
  """What the sampled clients would do, in sampling order.

  Attributes:
    full_steps: Local steps of E full epochs, per client.
    budget_steps: Today's budgets (`ComputeHeterogeneity.local_steps`).
    step_seconds: Seconds per local step on each client's device.
    comm_seconds: Seconds to download the model and upload the update.
    wanted: m, the number of clients the round wants to train.
  """

  full_steps: np.ndarray
  budget_steps: np.ndarray
  step_seconds: np.ndarray
  comm_seconds: np.ndarray
  wanted: int

  def full_seconds(self) -> np.ndarray:
    return clock.client_seconds(self.full_steps, self.step_seconds,
                                self.comm_seconds)


@dataclasses.dataclass(frozen=True)
class Deadline:
  """`--deadline_seconds` (> 0) or `--deadline_quantile` (in (0, 1])."""

  seconds: float = 0.0
  quantile: float = 0.0

  def resolve(self, full_seconds: np.ndarray) -> float:
    """The deadline in seconds for clients with these full-work times."""
    if self.seconds > 0:
      return float(self.seconds)
    return float(np.quantile(full_seconds, self.quantile))


@dataclasses.dataclass(frozen=True)
class RoundPlan:
  """What a policy decided for the sampled clients (sampling order).

  Attributes:
    kept: Whether each sampled client trains this round (False: dropped).
    steps: Local steps of each sampled client (0 for the dropped; also 0 for
      a kept client with no data, which only communicates).
    seconds: Each client's time for its planned work (its full-work time if
      dropped).
    round_seconds: The round's simulated duration.
    deadline_seconds: The deadline, or None for policies without one.
    deadline_missed: No client met the deadline, so the round waited for the
      first to finish.
  """

  kept: np.ndarray
  steps: np.ndarray
  seconds: np.ndarray
  round_seconds: float
  deadline_seconds: float | None = None
  deadline_missed: bool = False

  @property
  def num_dropped(self) -> int:
    return int(np.sum(~self.kept))


@dataclasses.dataclass(frozen=True)
class RoundPolicy:
  """A registered policy.

  Attributes:
    plan: (work, deadline) -> RoundPlan.
    uses_deadline: Whether it needs `--deadline_seconds` or
      `--deadline_quantile`.
    oversamples: Whether it samples ceil(`--oversample_factor` * m).
  """

  plan: Callable[[RoundWork, Deadline], RoundPlan]
  uses_deadline: bool = False
  oversamples: bool = False

  def sample_size(self, wanted: int, oversample_factor: float,
                  num_clients: int) -> int:
    """How many clients to sample for a round that trains `wanted`."""
    if not self.oversamples:
      return wanted
    # Rounded first: 1.3 * 10 is 13.000000000000002 in floating point.
    return min(num_clients, math.ceil(round(oversample_factor * wanted, 9)))


ROUND_POLICIES: registry.Registry[RoundPolicy] = registry.Registry(
    'round policy', '--round_policy')


def _wait_for(steps: np.ndarray, work: RoundWork) -> RoundPlan:
  seconds = clock.client_seconds(steps, work.step_seconds, work.comm_seconds)
  return RoundPlan(kept=np.ones(len(steps), bool),
                   steps=np.asarray(steps, np.int64), seconds=seconds,
                   round_seconds=float(np.max(seconds)))


def _budgets(work: RoundWork, deadline: Deadline) -> RoundPlan:
  del deadline
  return _wait_for(work.budget_steps, work)


def _wait_all(work: RoundWork, deadline: Deadline) -> RoundPlan:
  del deadline
  return _wait_for(work.full_steps, work)


def _deadline_drop(work: RoundWork, deadline: Deadline) -> RoundPlan:
  full = work.full_seconds()
  limit = deadline.resolve(full)
  order = np.argsort(full, kind='stable')
  finishers = [int(i) for i in order if full[i] <= limit][:work.wanted]
  missed = not finishers
  if missed:
    finishers = [int(order[0])]
  kept = np.zeros(len(full), bool)
  kept[finishers] = True
  if missed or len(finishers) == work.wanted:
    round_seconds = float(full[finishers[-1]])
  else:
    round_seconds = limit
  return RoundPlan(kept=kept,
                   steps=np.where(kept, work.full_steps, 0).astype(np.int64),
                   seconds=full, round_seconds=round_seconds,
                   deadline_seconds=limit, deadline_missed=missed)


def _deadline_partial(work: RoundWork, deadline: Deadline) -> RoundPlan:
  full = work.full_seconds()
  limit = deadline.resolve(full)
  full_steps = np.asarray(work.full_steps, np.int64)
  with np.errstate(divide='ignore', invalid='ignore'):
    fits = np.floor((limit - work.comm_seconds) / work.step_seconds)
  fits = np.nan_to_num(fits, nan=0.0, posinf=np.inf, neginf=0.0)
  steps = np.minimum(np.maximum(fits, 0), full_steps).astype(np.int64)
  # A client with no data has no steps to run: it only has to communicate.
  kept = np.where(full_steps > 0, steps >= 1, work.comm_seconds <= limit)
  missed = not np.any(kept)
  if missed:
    one_step = clock.client_seconds(np.minimum(full_steps, 1),
                                    work.step_seconds, work.comm_seconds)
    first = int(np.argmin(one_step))
    kept[first] = True
    steps[first] = min(int(full_steps[first]), 1)
  steps = np.where(kept, steps, 0)
  seconds = np.where(
      kept, clock.client_seconds(steps, work.step_seconds, work.comm_seconds),
      full)
  return RoundPlan(kept=kept, steps=steps, seconds=seconds,
                   round_seconds=float(np.max(seconds[kept])),
                   deadline_seconds=limit, deadline_missed=missed)


ROUND_POLICIES.register(
    'budgets',
    'today\'s local-step budgets (--capacity_profile, --straggler_fraction); '
    'every client is waited for and the clock only measures')(
        RoundPolicy(_budgets))
ROUND_POLICIES.register(
    'wait_all', 'every sampled client does E full epochs; the round waits '
    'for the slowest')(RoundPolicy(_wait_all))
ROUND_POLICIES.register(
    'deadline_drop',
    'sample ceil(--oversample_factor * m), keep the first m to finish by the '
    'deadline, drop the rest (FedCS, FedScale)')(
        RoundPolicy(_deadline_drop, uses_deadline=True, oversamples=True))
ROUND_POLICIES.register(
    'deadline_partial',
    'each client runs the local steps that fit by the deadline (at least '
    'one, or it is dropped)')(
        RoundPolicy(_deadline_partial, uses_deadline=True))
