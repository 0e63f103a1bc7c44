"""Fault injection: sampled clients that send corrupted updates.

Real federations have buggy and malicious clients. `--faulty_client_fraction`
makes round(fraction * clients_per_round) of each round's sampled clients
faulty, chosen from (seed, round), and `--faulty_mode` says what they do:

  * `nan`: send an update of NaN (half of the faulty clients) or +inf (the
    other half) values, claiming their normal weight;
  * `scale`: send their honest update multiplied by 100 (a model-boosting
    attack, Bhagoji et al. 2019, arXiv 1811.12470);
  * `sign_flip`: send the negated update;
  * `zero_examples`: have no data at all (an empty dataset).

The update faults are applied after the client's own finiteness check, so
they reach the aggregator as a faulty client would send them. They need our
self-reporting client work, which `fedavg` and `fedprox` switch to when
update faults are on (it computes exactly what TFF's FedAvg computes; see
tests/aggregators/compensation_test.py); `zero_examples` works with every
algorithm.

Robust options that tolerate them: `--aggregator=median|trimmed_mean|
compensated` drop non-finite updates; `--clip_norm` drops non-finite updates
and bounds scaled ones; `--zeroing` zeroes non-finite updates and updates far
larger than usual; DP (`--dp_noise_multiplier`) gives non-finite updates a
zero contribution (`aggregators/finite_guard.py`). Without them a NaN or inf
update makes the aggregate non-finite, which TFF's finalizer rejects, and the
training loop stops with an error naming the round. docs/faults.md has the
table of which option tolerates which fault, as measured by the tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tff_pipeline import registry
from tff_pipeline import settings

# Fault codes carried to the client work (0 means honest).
HONEST = 0
NAN = 1
INF = 2
SCALE = 3
SIGN_FLIP = 4
ZERO_EXAMPLES = 5
SCALE_FACTOR = 100.0

# Separates the fault stream from the others derived from --seed.
_FAULT_STREAM = 0x4641_554C

FAULT_MODES: registry.Registry[tuple[int, ...]] = registry.Registry(
    'fault mode', '--faulty_mode')
FAULT_MODES.register('nan', 'updates of NaN or +inf values')((NAN, INF))
FAULT_MODES.register('scale', f'updates times {SCALE_FACTOR:g}')((SCALE,))
FAULT_MODES.register('sign_flip', 'negated updates')((SIGN_FLIP,))
FAULT_MODES.register('zero_examples', 'clients with no data')(
    (ZERO_EXAMPLES,))


@dataclasses.dataclass(frozen=True)
class FaultInjection(settings.Validated):
  """Which sampled clients are faulty, and how."""

  fraction: float = settings.setting(
      0.0, flag='faulty_client_fraction', checks=[settings.fraction()],
      help='Share of each round\'s sampled clients that are faulty, '
      'chosen from (seed, round).')
  mode: str = settings.setting(
      'nan', flag='faulty_mode', choices=FAULT_MODES,
      help='What faulty clients do: {choices}')

  @property
  def enabled(self) -> bool:
    return self.fraction > 0

  @property
  def corrupts_updates(self) -> bool:
    """Whether clients send corrupted updates (vs. merely having no data)."""
    return self.enabled and self.mode != 'zero_examples'

  def fault_codes(self, seed: int, round_num: int,
                  num_sampled: int) -> list[int]:
    """The fault code of each of the round's sampled clients, in order."""
    codes = [HONEST] * num_sampled
    if not self.enabled:
      return codes
    count = int(round(self.fraction * num_sampled))
    rng = np.random.default_rng([seed, _FAULT_STREAM, round_num])
    mode_codes = FAULT_MODES.get(self.mode)
    for k, position in enumerate(sorted(rng.permutation(num_sampled)[:count])):
      codes[position] = mode_codes[k % len(mode_codes)]
    return codes


def count_faulty(codes: Sequence[int]) -> int:
  return sum(code != HONEST for code in codes)
