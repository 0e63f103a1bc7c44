"""Client selection: which clients train in a round, a registry by name.

Every selector is a pure function of (seed, round, the population and its
records): a resumed run selects what an uninterrupted one does, because the
records are checkpointed (`records.py`) and nothing else is remembered.

  * `uniform`: m clients uniformly without replacement; exactly what
    `tff.simulation.build_uniform_sampling_fn(client_ids, replace=False,
    random_seed=seed)(round_num, m)` returns (its Lehmer generator is
    reproduced here so that this module needs no TensorFlow), so a default
    run is unchanged.
  * `power_of_choice`: Cho, Wang and Joshi, "Towards Understanding Biased
    Client Selection in Federated Learning", AISTATS 2022 (arXiv
    2010.01243), Algorithm 1: sample a candidate set of d clients without
    replacement with probability proportional to p_k, the client's share of
    the data; keep the m candidates with the highest local loss F_k(w) of
    the current global model w. In the paper the candidates compute F_k(w)
    and report it; here the training loop evaluates the global model on each
    candidate's training data (the `losses` callback of `Population`), which
    stands in for that report and costs the server a forward pass per
    candidate, reported as `selection/evaluation_seconds`.
  * `oort`: Lai, Zhu, Madhyastha and Chowdhury, "Oort: Efficient Federated
    Learning via Guided Participant Selection", OSDI 2021, Algorithm 1 and
    sec. 4, with the choices of its reference implementation
    (SymbioticLab/Oort, `training_selector.getTopK`) where the paper leaves
    them open. What we take:
      - statistical utility |B_i| * L_i from the client's last participation
        (the paper's |B_i| sqrt(mean loss^2) over the samples it trained on;
        we have each client's mean loss of the global model before training,
        from its record, so L_i stands in for the root mean square; they are
        equal when a client's per-example losses are equal);
      - as the reference implementation, utilities are min-max normalised
        over the explored clients before the staleness term is added;
      - the staleness (temporal uncertainty) term sqrt(0.1 ln R / L(i)), R
        the current round and L(i) the round client i last took part in;
      - the system factor (T / t_i)^alpha for clients slower than the
        preferred round duration T (t_i: the clock's expected full-work
        seconds of the client's device);
      - exploitation of (1 - eps) m clients: those whose utility is at least
        c = `--oort_cutoff` times the (1 - eps) m-th highest are admitted,
        and the round's clients are sampled among them with probability
        proportional to utility, without replacement;
      - exploration of the other eps m among never-seen clients, sampled with
        probability proportional to |B_i| (T / t_i)^alpha (the reference
        implementation's prior: larger and faster clients first);
      - eps = max(eps_0 * decay^R, eps_min) (the reference implementation
        decays eps once per round, from 0.9 by 0.98 to at least 0.2).
    What we leave out: the pacer that raises T when the utility plateaus
    (T is fixed: `--oort_preferred_seconds`, or the median of the devices'
    full-work times), the clipping of utilities at a high quantile, and the
    blacklist of over-selected clients. Oort's state is the client records
    plus the round number, so it needs no state of its own.

A selector returns a `Selection`: the chosen clients' indices (into
`Population.client_ids`, in selection order) and facts for the metrics CSV
(`selection/...`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import registry
from tff_pipeline.scheduling import records as records_lib

# The Lehmer generator of tff.simulation.build_uniform_sampling_fn
# (tensorflow_federated/python/simulation/sampling_utils.py).
MLCG_MODULUS = 2**31 - 1
MLCG_MULTIPLIER = 16807

# Separate random streams, derived from --seed.
_POC_STREAM = 0x504F_4343
_OORT_STREAM = 0x4F4F_5254

# Oort's temporal-uncertainty constant (paper, Algorithm 1: 0.1).
OORT_STALENESS_WEIGHT = 0.1

LossesFn = Callable[[np.ndarray], np.ndarray]
"""losses(client indices) -> the current global model's loss on each
client's training data, in the same order."""


@dataclasses.dataclass(frozen=True)
class Population:
  """What selection may know about the clients.

  Attributes:
    client_ids: Every client's id; indices refer to this order.
    num_examples: |B_k|, each client's number of training examples.
    full_work_seconds: Each client's expected simulated seconds for a round
      of full work (the clock's estimate from its device).
    records: The server's per-client records.
    losses: Evaluates the current global model on clients' data (needed by
      `power_of_choice` only).
  """

  client_ids: Sequence[str]
  num_examples: np.ndarray
  full_work_seconds: np.ndarray
  records: records_lib.ClientRecords
  losses: LossesFn | None = None

  def __post_init__(self):
    n = len(self.client_ids)
    num_examples = np.asarray(self.num_examples, np.float64)
    seconds = np.asarray(self.full_work_seconds, np.float64)
    if num_examples.shape != (n,) or seconds.shape != (n,):
      raise ValueError(
          f'population of {n} clients with {num_examples.shape} data sizes '
          f'and {seconds.shape} full-work times')
    if self.records.num_clients != n:
      raise ValueError(f'population of {n} clients with records of '
                       f'{self.records.num_clients}')
    if not (np.all(np.isfinite(num_examples)) and np.all(num_examples >= 0)):
      raise ValueError('data sizes must be finite and >= 0')
    if not (np.all(np.isfinite(seconds)) and np.all(seconds > 0)):
      raise ValueError('full-work times must be finite and > 0')

  @property
  def size(self) -> int:
    return len(self.client_ids)


@dataclasses.dataclass(frozen=True)
class Selection:
  """A round's clients and what the selector measured.

  Attributes:
    indices: The chosen clients' indices into `Population.client_ids`, in
      selection order (distinct).
    facts: Metrics-CSV columns, e.g. `selection/candidates`.
  """

  indices: np.ndarray
  facts: dict[str, float]

  def client_ids(self, population: Population) -> list[str]:
    return [population.client_ids[i] for i in self.indices]


Selector = Callable[[config_lib.SelectionConfig, int, int, int, Population],
                    Selection]
"""(config, seed, round_num, m, population) -> Selection."""
SELECTORS: registry.Registry[Selector] = registry.Registry(
    'client selection', '--client_selection', sort_names=False)


def select(config: config_lib.SelectionConfig, seed: int, round_num: int, m: int,
           population: Population) -> Selection:
  """The m clients of round `round_num`, as `config.client_selection` says.

  Raises:
    errors.UsageError: for an unknown selector, m outside [1, population],
      or settings that cannot select m clients (naming the flag).
  """
  selector = SELECTORS.get(config.client_selection)
  if not 1 <= m <= population.size:
    raise errors.UsageError(
        f'--clients_per_round: cannot select {m} of {population.size} '
        'clients')
  if round_num < 1:
    raise ValueError(f'round_num must be >= 1, got {round_num}')
  selection = selector(config, seed, round_num, m, population)
  indices = np.asarray(selection.indices, np.int64)
  assert indices.shape == (m,) and np.unique(indices).size == m, indices
  return Selection(indices, dict(selection.facts))


def uniform_indices(seed: int, round_num: int, m: int, n: int) -> np.ndarray:
  """TFF's uniform sampling without replacement, as indices into n clients.

  `build_uniform_sampling_fn(ids, replace=False, random_seed=seed)(round, m)`
  seeds a `RandomState` with a Lehmer generator's state for the round and
  calls `choice(ids, m, replace=False)`, which takes the first m of a
  permutation of range(n): these are the same indices.
  """
  start = np.random.RandomState(seed).randint(1, MLCG_MODULUS - 1)
  round_seed = pow(MLCG_MULTIPLIER, round_num, MLCG_MODULUS) * start
  state = np.random.RandomState(round_seed % MLCG_MODULUS)
  return state.choice(n, size=m, replace=False).astype(np.int64)


@SELECTORS.register('uniform',
                    'uniformly without replacement (TFF\'s sampler)')
def _uniform(config: config_lib.SelectionConfig, seed: int, round_num: int, m: int,
             population: Population) -> Selection:
  del config
  return Selection(uniform_indices(seed, round_num, m, population.size), {})


def poc_candidates(config: config_lib.SelectionConfig, m: int, num_clients: int) -> int:
  """d of power of choice: `--poc_candidates`, or 2m when it is 0.

  Raises:
    errors.UsageError: if d < m or d exceeds the population.
  """
  d = config.poc_candidates or min(2 * m, num_clients)
  if d < m:
    raise errors.UsageError(
        f'--poc_candidates={d} must be at least --clients_per_round={m} '
        '(power of choice keeps m of d candidates)')
  if d > num_clients:
    raise errors.UsageError(
        f'--poc_candidates={d} must not exceed the {num_clients} clients')
  return d


@SELECTORS.register(
    'power_of_choice',
    'the m highest-loss of d candidates sampled in proportion to data '
    '(Cho et al. 2022)')
def _power_of_choice(config: config_lib.SelectionConfig, seed: int, round_num: int,
                     m: int, population: Population) -> Selection:
  d = poc_candidates(config, m, population.size)
  if population.losses is None:
    raise ValueError('power_of_choice needs the population\'s losses callback')
  sizes = np.asarray(population.num_examples, np.float64)
  if sizes.sum() <= 0:
    raise errors.DataError('power_of_choice: every client has 0 examples')
  rng = np.random.default_rng([seed, _POC_STREAM, round_num])
  # The candidates must be distinct; clients without data cannot be drawn,
  # so there must be at least d with data.
  if np.count_nonzero(sizes) < d:
    raise errors.UsageError(
        f'--poc_candidates={d} exceeds the {np.count_nonzero(sizes)} clients '
        'that have data')
  candidates = rng.choice(population.size, size=d, replace=False,
                          p=sizes / sizes.sum()).astype(np.int64)
  start = time.perf_counter()
  losses = np.asarray(population.losses(candidates), np.float64)
  seconds = time.perf_counter() - start
  if losses.shape != (d,):
    raise ValueError(f'losses callback returned shape {losses.shape} for '
                     f'{d} candidates')
  # A non-finite loss ranks last; a stable sort breaks ties by candidate
  # order, which is itself random.
  ranked = np.where(np.isfinite(losses), losses, -np.inf)
  order = np.argsort(-ranked, kind='stable')[:m]
  return Selection(candidates[order], {
      'selection/candidates': float(d),
      'selection/mean_candidate_loss': _nanmean(losses),
      'selection/mean_selected_loss': _nanmean(losses[order]),
      'selection/evaluation_seconds': seconds,
  })


def oort_exploration(config: config_lib.SelectionConfig, round_num: int) -> float:
  """eps of round `round_num`: max(eps_0 * decay^round, eps_min)."""
  return max(config.oort_exploration
             * config.oort_exploration_decay**round_num,
             config.oort_exploration_min)


def oort_preferred_seconds(config: config_lib.SelectionConfig,
                           population: Population) -> float:
  """T: `--oort_preferred_seconds`, or the devices' median full-work time."""
  if config.oort_preferred_seconds > 0:
    return config.oort_preferred_seconds
  return float(np.median(population.full_work_seconds))


def oort_system_factor(config: config_lib.SelectionConfig, seconds: np.ndarray,
                       preferred: float) -> np.ndarray:
  """(T / t_i)^alpha for clients slower than T, else 1."""
  seconds = np.asarray(seconds, np.float64)
  return np.where(seconds > preferred,
                  (preferred / seconds)**config.oort_alpha, 1.0)


def oort_utilities(config: config_lib.SelectionConfig, round_num: int,
                   population: Population) -> np.ndarray:
  """Each client's Oort utility; NaN for clients that cannot be exploited.

  Exploitable clients have taken part before and have a known loss.
  """
  rec = population.records
  exploitable = rec.seen & np.isfinite(rec.last_loss)
  utility = np.full(population.size, np.nan)
  if not exploitable.any():
    return utility
  statistical = (np.asarray(population.num_examples, np.float64)
                 * rec.last_loss)[exploitable]
  low, high = statistical.min(), statistical.max()
  spread = high - low
  normalised = ((statistical - low) / spread if spread > 0
                else np.zeros_like(statistical))
  last = rec.last_round[exploitable].astype(np.float64)
  staleness = np.sqrt(OORT_STALENESS_WEIGHT * math.log(round_num) / last)
  preferred = oort_preferred_seconds(config, population)
  system = oort_system_factor(
      config, population.full_work_seconds[exploitable], preferred)
  utility[exploitable] = (normalised + staleness) * system
  return utility


def _weighted_sample(rng: np.random.Generator, pool: np.ndarray,
                     weights: np.ndarray, k: int) -> np.ndarray:
  """k distinct members of `pool`, drawn in proportion to `weights`.

  Falls back to uniform draws when the weights are all zero.
  """
  if k <= 0:
    return np.zeros(0, np.int64)
  weights = np.asarray(weights, np.float64)
  positive = np.count_nonzero(weights > 0)
  if weights.sum() <= 0 or positive < k:
    # Too few positive weights to draw k distinct clients: add a tiny floor
    # so every member of the pool can be drawn, after the weighted ones.
    floor = max(float(weights.max(initial=0.0)), 1.0) * 1e-9
    weights = np.maximum(weights, 0.0) + floor
  chosen = rng.choice(pool.size, size=k, replace=False,
                      p=weights / weights.sum())
  return pool[chosen].astype(np.int64)


@SELECTORS.register(
    'oort',
    'utility |B_i| L_i times a speed factor, with exploration of unseen '
    'clients (Lai et al. 2021)')
def _oort(config: config_lib.SelectionConfig, seed: int, round_num: int, m: int,
          population: Population) -> Selection:
  rng = np.random.default_rng([seed, _OORT_STREAM, round_num])
  eps = oort_exploration(config, round_num)
  utility = oort_utilities(config, round_num, population)
  exploitable = np.flatnonzero(np.isfinite(utility))
  unexplored = np.flatnonzero(~population.records.seen)
  exploit_quota = min(int(m * (1.0 - eps)), exploitable.size)
  explore_count = min(m - exploit_quota, unexplored.size)
  # Not enough never-seen clients: the rest is exploited as well.
  exploit_count = m - explore_count
  exploit = np.zeros(0, np.int64)
  if exploit_count > 0 and exploitable.size:
    ranked = exploitable[np.argsort(-utility[exploitable], kind='stable')]
    quota = min(exploit_count, ranked.size)
    cutoff = config.oort_cutoff * utility[ranked[quota - 1]]
    admitted = ranked[utility[ranked] >= cutoff]
    exploit = _weighted_sample(rng, admitted, utility[admitted], quota)
  preferred = oort_preferred_seconds(config, population)
  prior = (np.asarray(population.num_examples, np.float64)
           * oort_system_factor(config, population.full_work_seconds,
                                preferred))
  explore = _weighted_sample(rng, unexplored, prior[unexplored],
                             explore_count)
  chosen = np.concatenate([exploit, explore])
  if chosen.size < m:
    # Seen clients without a known loss: fill uniformly from the rest.
    rest = np.setdiff1d(np.arange(population.size), chosen)
    chosen = np.concatenate(
        [chosen, rng.choice(rest, size=m - chosen.size, replace=False)])
  chosen_utility = utility[exploit]
  return Selection(chosen.astype(np.int64), {
      'selection/exploration_share': eps,
      'selection/explored': float(explore.size),
      'selection/preferred_seconds': preferred,
      'selection/mean_utility': _nanmean(chosen_utility),
      'selection/never_seen': float(unexplored.size),
  })


def _nanmean(values: np.ndarray) -> float:
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else float('nan')
