"""Compensation that closes the loop: more local work for lagging clients.

The design this pipeline implements has the server evaluate the global
model, feed the result back, and give clients on which it does poorly more
local training. The server's records (`records.py`) hold each client's loss
of the global model before its last training, L_i; the population's loss is
their data-weighted mean Lbar (as the compensated aggregator's, over the
clients whose loss is known). With `--feedback`, a client of the round gets
the work factor

    f_i = clip((L_i / Lbar)^beta, 1, F),   beta = `--feedback_power`,
                                             F = `--feedback_max_factor`,

so only clients that lag the population (L_i > Lbar) get more, never less,
and at most F times; a client whose loss is unknown (never seen) gets 1. Its
local steps become

    tau_i' = max(tau_i, min(ceil(f_i * tau_i), tau_i^max)),

where tau_i is what the round policy planned and tau_i^max the steps its
device can run by the round's deadline, or, under policies without one
(`wait_all`, `budgets`), by the round's planned duration (the slowest
client's finish). So the extra work never makes a client miss a deadline
or lengthen a round: it fills time the client would otherwise wait
(`selecting.SelectingScheduler.plan` applies it).

Why the objective stays the same (with `--aggregator=compensated`). Client
i's update after tau_i local SGD steps at learning rate eta is
Delta_i = eta sum_k g_i(w_i^k). The compensated aggregator divides it by
tau_i and rescales by tau_eff = sum_i p_i tau_i (FedNova, Wang et al. 2020,
"Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", arXiv 2007.07481):

    update = eta tau_eff sum_i p_i d_i,   d_i = (1/tau_i) sum_k g_i(w_i^k).

Each d_i is an average of gradients, whatever tau_i, so client i keeps the
weight p_i in the objective sum_i p_i F_i that the rounds minimise (FedNova,
Theorem 1). Extra steps change d_i (an average over a longer local
trajectory, further into the client's own landscape) and raise tau_eff, the
server step's effective number of steps; they do not give the lagging
client more weight. Plain FedAvg (`--aggregator=mean`) has no such
normalisation: its surrogate objective weights clients by p_i tau_i, so
there the feedback also moves the objective towards the lagging clients --
which is what loss-aware reweighting (`--compensation_q`) does on purpose,
and bounded.

Why local work and not a learning-rate factor. A client that trains with
learning rate f_i eta sends f_i eta sum_k g_i(w_i^k); dividing by tau_i
leaves the factor f_i, so its weight in the objective becomes p_i f_i.
FedNova's general form divides by ||a_i||_1 = f_i tau_i (the sum of the
client's per-step learning-rate scalings), which cancels it; the client
would have to report f_i tau_i as its local steps, and the client work to
take a per-client learning rate (today the client optimizer's learning rate
is server state broadcast to all clients). Local work needs neither: the
step budget is already a per-client input, and the normalisation by tau_i is
already the right one. So only the local-work variant is implemented.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline.scheduling import records as records_lib


def work_factors(config: config_lib.FeedbackConfig, client_losses: np.ndarray,
                 population_loss: float) -> np.ndarray:
  """f_i = clip((L_i / Lbar)^beta, 1, F); 1 where L_i or Lbar is unknown.

  Args:
    config: The feedback settings (the factors are 1 when it is off).
    client_losses: L_i of the round's clients (NaN: unknown).
    population_loss: Lbar (NaN: unknown).
  """
  losses = np.asarray(client_losses, np.float64)
  factors = np.ones_like(losses)
  if (not config.feedback or not math.isfinite(population_loss)
      or population_loss <= 0):
    return factors
  known = np.isfinite(losses) & (losses > 0)
  with np.errstate(over='ignore'):
    ratio = losses[known] / population_loss
    factors[known] = np.clip(ratio**config.feedback_power, 1.0,
                             config.feedback_max_factor)
  return factors


def compensated_steps(planned_steps: np.ndarray, max_steps: np.ndarray,
                      factors: np.ndarray) -> np.ndarray:
  """tau_i' = max(tau_i, min(ceil(f_i tau_i), tau_i^max)), as int64.

  Args:
    planned_steps: tau_i, what the round policy planned (>= 0).
    max_steps: tau_i^max, the steps that fit by the deadline (inf: none).
    factors: f_i >= 1.
  """
  planned = np.asarray(planned_steps, np.float64)
  limit = np.asarray(max_steps, np.float64)
  factors = np.asarray(factors, np.float64)
  if not (planned.shape == limit.shape == factors.shape):
    raise ValueError(f'shapes differ: planned {planned.shape}, max '
                     f'{limit.shape}, factors {factors.shape}')
  if np.any(~np.isfinite(planned)) or np.any(planned < 0):
    raise ValueError(f'planned steps must be finite and >= 0: {planned}')
  if np.any(np.isnan(limit)) or np.any(~np.isfinite(factors)) or np.any(
      factors < 1):
    raise ValueError(f'bad max steps {limit} or factors {factors}')
  # ceil of a product that is an integer up to rounding (e.g. 1.1 * 10)
  # must not gain a step: round to 1e-9 first.
  boosted = np.ceil(np.round(factors * planned, 9))
  return np.maximum(planned, np.minimum(boosted, limit)).astype(np.int64)


def steps_that_fit(bound_seconds: float, step_seconds: np.ndarray,
                   comm_seconds: np.ndarray) -> np.ndarray:
  """tau_i^max: the local steps each client can run by `bound_seconds`.

  floor((bound - comm_i) / step_i), at least 0; inf for a client whose steps
  cost nothing (a zero step time) or when the bound is inf.
  """
  step = np.asarray(step_seconds, np.float64)
  comm = np.asarray(comm_seconds, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    fits = np.floor((bound_seconds - comm) / step)
  fits = np.where(step > 0, fits, np.inf)
  return np.maximum(np.nan_to_num(fits, nan=0.0, posinf=np.inf), 0.0)


@dataclasses.dataclass(frozen=True)
class Feedback:
  """The feedback of one round.

  Attributes:
    local_steps: Each of the round's clients' new local steps.
    factors: Their work factors f_i.
    facts: Metrics-CSV columns (`feedback/...`).
  """

  local_steps: np.ndarray
  factors: np.ndarray
  facts: dict[str, float]


def apply(config: config_lib.FeedbackConfig, records: records_lib.ClientRecords,
          num_examples: np.ndarray, client_indices: np.ndarray,
          planned_steps: np.ndarray, max_steps: np.ndarray,
          client_losses: np.ndarray | None = None) -> Feedback:
  """The round's local steps after feedback from the records.

  Args:
    config: The feedback settings.
    records: The server's records before the round.
    num_examples: n_k of every client of the population (weights of Lbar).
    client_indices: The round's clients.
    planned_steps: Their local steps as the round policy planned them.
    max_steps: The most each can run by the deadline (inf: no deadline).
    client_losses: The round's clients' losses of the current global model,
      if the server measured them before the round; they replace the
      records' older values (also in Lbar). None: use the records.
  """
  indices = np.asarray(client_indices, np.int64)
  if client_losses is not None:
    records = records.with_losses(indices, client_losses)
  population_loss = records_lib.weighted_mean_loss(records, num_examples)
  factors = work_factors(config, records.last_loss[indices], population_loss)
  steps = compensated_steps(planned_steps, max_steps, factors)
  planned = np.asarray(planned_steps, np.int64)
  facts = {}
  if config.feedback:
    facts = {
        'feedback/population_loss': population_loss,
        'feedback/num_boosted': float(np.count_nonzero(steps > planned)),
        'feedback/extra_steps': float(np.sum(steps - planned)),
        'feedback/max_factor': float(factors.max(initial=1.0)),
    }
  return Feedback(steps, factors, facts)
