"""Simulated heterogeneous compute: each client's local-step budget.

Real federations mix fast devices with stragglers. We simulate this on
purpose, so that its effect on FedAvg, and the compensation of it, can be
measured: every sampled client gets a budget tau_i of local steps (batches),
at most the E * ceil(n_i / B) steps of E full local epochs. Two mechanisms,
which can be combined (the smaller budget wins):

  * stragglers (`--straggler_fraction`): each sampled client is a straggler
    in a round with this probability; a straggler's budget is drawn either as
    a whole number of epochs in [1, E] (`--straggler_budget=epochs`) or as a
    number of steps in [`--straggler_min_steps`, `--straggler_max_steps`]
    (`--straggler_budget=steps`). This is the setting of Wang et al. 2020,
    "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
    Optimization" (FedNova, arXiv 2007.07481), sec. 6.
  * a capacity profile (`--capacity_profile`) fixed across rounds: client k
    has capacity c_k and always runs ceil(c_k * E * steps_per_epoch) steps;
    `uniform` draws c_k from U[`--min_capacity`, 1]; `minority` gives the
    clients of a `--slow_client_fraction` minority capacity `--min_capacity`
    and everyone else 1. The minority is `minority_clients(...)`, the same
    selection that `--feature_skew` uses: with equal fractions, the clients
    that see different images are also the slow ones (one kind of device
    that differs in both ways).

Every draw is a pure function of (seed, round, client) or (seed, client), so
a seed always gives the same budgets, also after a resume.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from tff_pipeline import errors
from tff_pipeline import registry
from tff_pipeline import settings

# Separate random streams, all derived from --seed.
_STRAGGLER_STREAM = 0x5354_5241
_CAPACITY_STREAM = 0x4341_5041

CapacityFn = Callable[['ComputeHeterogeneity', int, int, int | None], float]
"""(settings, seed, client index, number of clients) -> capacity in (0, 1]."""
CAPACITY_PROFILES: registry.Registry[CapacityFn | None] = registry.Registry(
    'capacity profile', '--capacity_profile'
)
CAPACITY_PROFILES.register('none', 'every client can run its full budget')(
    None)


@CAPACITY_PROFILES.register('uniform',
                            'capacity ~ U[--min_capacity, 1], fixed per client')
def _uniform_capacity(h: 'ComputeHeterogeneity', seed: int,
                      client_index: int, num_clients: int | None) -> float:
  del num_clients
  rng = np.random.default_rng([seed, _CAPACITY_STREAM, client_index])
  return float(rng.uniform(h.min_capacity, 1.0))


@CAPACITY_PROFILES.register(
    'minority',
    'a --slow_client_fraction minority runs at --min_capacity (the '
    '--feature_skew minority when the fractions are equal)')
def _minority_capacity(h: 'ComputeHeterogeneity', seed: int,
                       client_index: int, num_clients: int | None) -> float:
  if num_clients is None:
    raise ValueError('the minority capacity profile needs num_clients')
  slow = minority_clients(num_clients, h.slow_client_fraction, seed)
  return h.min_capacity if client_index in set(slow.tolist()) else 1.0


# Separates the minority's random stream from the others of --seed.
_MINORITY_STREAM = 0x534B_4557


def minority_clients(num_clients: int, fraction: float,
                     seed: int) -> np.ndarray:
  """The round(fraction * num_clients) clients of the run's minority.

  A pure function of (num_clients, fraction, seed), shared by the `minority`
  capacity profile and `--feature_skew`.
  """
  if not 0.0 <= fraction <= 1.0:
    raise errors.UsageError(
        f'minority fraction {fraction} (--feature_skew_fraction or '
        '--slow_client_fraction) must be in [0, 1]')
  count = int(round(fraction * num_clients))
  rng = np.random.default_rng([seed, _MINORITY_STREAM])
  return np.sort(rng.permutation(num_clients)[:count])


STRAGGLER_BUDGETS = ('epochs', 'steps')


@dataclasses.dataclass(frozen=True)
class ComputeHeterogeneity(settings.Validated):
  """How local-step budgets are drawn. The defaults simulate none."""

  straggler_fraction: float = settings.setting(
      0.0, checks=[settings.fraction()],
      help='Probability that a sampled client is a straggler this round.')
  straggler_budget: str = settings.setting(
      'epochs', choices=STRAGGLER_BUDGETS,
      help='epochs: a straggler runs a whole number of epochs in [1, E]; '
      'steps: a number of steps in [--straggler_min_steps, '
      '--straggler_max_steps].')
  straggler_min_steps: int = settings.setting(
      1, checks=[settings.Check(lambda v: v >= 1, 'must be >= 1')],
      help='steps: smallest straggler budget, in local steps.')
  straggler_max_steps: int = settings.setting(
      0, help='steps: largest straggler budget; 0 means the full budget '
      'minus one step.')
  capacity_profile: str = settings.setting(
      'none', choices=CAPACITY_PROFILES,
      help='Per-client compute capacity, fixed across rounds: {choices}')
  min_capacity: float = settings.setting(
      0.1, checks=[settings.Check(lambda v: 0.0 < v <= 1.0,
                                  'must be in (0, 1]')],
      help='Smallest capacity (uniform profile) or the slow clients\' '
      'capacity (minority profile), in (0, 1].')
  slow_client_fraction: float = settings.setting(
      0.2, checks=[settings.fraction()],
      help='minority capacity profile: share of slow clients (the same '
      'clients as the --feature_skew minority for equal fractions).')

  def validate(self) -> None:
    settings.check_fields(self)
    if 0 < self.straggler_max_steps < self.straggler_min_steps:
      raise errors.UsageError(
          f'--straggler_max_steps={self.straggler_max_steps} must be 0 or >= '
          f'--straggler_min_steps={self.straggler_min_steps}')

  @property
  def enabled(self) -> bool:
    return self.straggler_fraction > 0 or self.capacity_profile != 'none'

  def capacity(self, seed: int, client_index: int,
               num_clients: int | None = None) -> float:
    """Client's fixed capacity in (0, 1]; 1 without a profile."""
    profile = CAPACITY_PROFILES.get(self.capacity_profile)
    if profile is None:
      return 1.0
    return profile(self, seed, client_index, num_clients)

  def local_steps(
      self,
      seed: int,
      round_num: int,
      client_index: int,
      steps_per_epoch: int,
      epochs: int,
      num_clients: int | None = None,
  ) -> tuple[int, bool]:
    """Returns (budget in local steps, whether the client straggles)."""
    full = steps_per_epoch * epochs
    budget = max(1, math.ceil(
        self.capacity(seed, client_index, num_clients) * full))
    rng = np.random.default_rng(
        [seed, _STRAGGLER_STREAM, round_num, client_index])
    straggler = bool(rng.random() < self.straggler_fraction)
    if straggler:
      if self.straggler_budget == 'epochs':
        steps = int(rng.integers(1, epochs + 1)) * steps_per_epoch
      else:
        high = self.straggler_max_steps or max(full - 1, 1)
        low = min(self.straggler_min_steps, high)
        steps = int(rng.integers(low, high + 1))
      budget = min(budget, steps)
    return min(budget, full), straggler
