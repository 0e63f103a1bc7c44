"""Privacy accounting for DP-FedAvg runs: (epsilon, delta) after T rounds.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially
Private Recurrent Language Models", ICLR, arXiv 1710.06963) gives user-level
(here: client-level) differential privacy. Each round it clips every sampled
client's model update to L2 norm C and adds Gaussian noise of standard
deviation sigma * C to their sum, where sigma is the noise multiplier
(`--dp_noise_multiplier`). One round is therefore a subsampled Gaussian
mechanism, and a run of T rounds is T adaptive compositions of it.

The accounting uses Renyi differential privacy (RDP; Mironov 2017, "Renyi
Differential Privacy", CSF, arXiv 1702.07476): RDP at every order alpha adds
up under composition, and the total converts to (epsilon, delta)-DP at the
end. The RDP of the Poisson-subsampled Gaussian mechanism is computed as in
Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled
Gaussian Mechanism" (arXiv 1908.10530). Both are implemented by
`dp_accounting.rdp.RdpAccountant`, whose `compute_epsilon` also applies the
tighter RDP-to-DP conversion of Balle et al. 2020 (arXiv 2004.00010,
Proposition 12). Neighbouring datasets differ by adding or removing one
client's whole data set.

An approximation, stated plainly: the pipeline samples exactly
`--clients_per_round` distinct clients each round, uniformly without
replacement (`tff.simulation.build_uniform_sampling_fn`). This module
analyses Poisson sampling instead, where each client takes part
independently with probability q = clients_per_round / num_clients. It is
the standard approximation for that case, the one used by TFF's and TF
Privacy's own tutorials, but it is not a formal guarantee for the sampler
the pipeline actually runs.

Numbers are RDP upper bounds; a privacy-loss-distribution accountant
(`dp_accounting.pld.PLDAccountant`) gives somewhat smaller epsilons for the
same mechanism.
"""

from __future__ import annotations

import math
import numbers

import dp_accounting
from dp_accounting import rdp

from tff_pipeline import errors


def _check_noise_multiplier(noise_multiplier: float) -> None:
  if (isinstance(noise_multiplier, bool) or
      not isinstance(noise_multiplier, numbers.Real) or
      not math.isfinite(noise_multiplier) or noise_multiplier <= 0):
    raise errors.UsageError(
        f'--dp_noise_multiplier={noise_multiplier!r} must be a finite number '
        '> 0 for privacy accounting (0 means no DP: there is no epsilon to '
        'compute)')


def _check_sampling_probability(sampling_probability: float) -> None:
  if (isinstance(sampling_probability, bool) or
      not isinstance(sampling_probability, numbers.Real) or
      not 0 < sampling_probability <= 1):
    raise errors.UsageError(
        f'sampling rate --clients_per_round/--num_clients='
        f'{sampling_probability!r} must be in (0, 1]')


def _check_rounds(rounds: int) -> None:
  if (isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or
      rounds < 1):
    raise errors.UsageError(
        f'--total_rounds={rounds!r} must be an integer >= 1')


def _check_delta(delta: float) -> None:
  if (isinstance(delta, bool) or not isinstance(delta, numbers.Real) or
      not 0 < delta < 1):
    raise errors.UsageError(f'--dp_delta={delta!r} must be in (0, 1)')


def _one_round_event(noise_multiplier: float,
                     sampling_probability: float) -> dp_accounting.DpEvent:
  """One DP-FedAvg round: the Gaussian mechanism on a Poisson sample."""
  return dp_accounting.PoissonSampledDpEvent(
      float(sampling_probability),
      dp_accounting.GaussianDpEvent(float(noise_multiplier)))


def dp_epsilon(noise_multiplier: float, sampling_probability: float,
               rounds: int, delta: float) -> float:
  """Epsilon of `rounds` rounds of DP-FedAvg, by RDP accounting.

  Composes `rounds` times the Poisson-subsampled Gaussian mechanism
  (`PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`) in a
  `dp_accounting.rdp.RdpAccountant` over its default orders and converts the
  RDP curve to (epsilon, delta)-DP (Mironov 2017, arXiv 1702.07476; Mironov,
  Talwar, Zhang 2019, arXiv 1908.10530; DP-FedAvg: McMahan et al. 2018,
  arXiv 1710.06963).

  The pipeline samples a fixed number of clients without replacement each
  round; the Poisson-sampling analysis at rate q used here is the standard
  approximation for that case, used by TFF's and TF Privacy's own tutorials,
  not an exact guarantee for fixed-size sampling (see the module docstring).

  Args:
    noise_multiplier: sigma = noise standard deviation / clipping norm; > 0.
    sampling_probability: q = clients_per_round / num_clients, in (0, 1].
    rounds: Number of rounds T, >= 1.
    delta: Target delta, in (0, 1).

  Returns:
    The smallest epsilon the RDP accountant certifies at `delta`.

  Raises:
    errors.UsageError: An argument is out of range; the message names the
      flag it comes from.
  """
  _check_noise_multiplier(noise_multiplier)
  _check_sampling_probability(sampling_probability)
  _check_rounds(rounds)
  _check_delta(delta)
  accountant = rdp.RdpAccountant()
  accountant.compose(dp_accounting.SelfComposedDpEvent(
      _one_round_event(noise_multiplier, sampling_probability), int(rounds)))
  return float(accountant.get_epsilon(float(delta)))


def dp_epsilon_by_round(noise_multiplier: float, sampling_probability: float,
                        total_rounds: int, delta: float) -> list[float]:
  """Epsilon after each of rounds 1..`total_rounds`, as `dp_epsilon` computes.

  Uses one `RdpAccountant` that composes a single round. RDP composes
  additively at each order (Mironov 2017, arXiv 1702.07476), so the RDP
  curve after t rounds is t times the one-round curve, which is exactly what
  the accountant computes for a `SelfComposedDpEvent` of count t; each curve
  is converted with `dp_accounting.rdp.compute_epsilon`, the conversion the
  accountant's `get_epsilon` uses. The costly part, the RDP of the subsampled
  Gaussian at every order (Mironov, Talwar, Zhang 2019, arXiv 1908.10530),
  is thus evaluated once instead of once per round, and the last element
  equals `dp_epsilon(..., total_rounds, ...)` exactly.

  Args:
    noise_multiplier: sigma = noise standard deviation / clipping norm; > 0.
    sampling_probability: q = clients_per_round / num_clients, in (0, 1].
    total_rounds: Number of rounds T, >= 1.
    delta: Target delta, in (0, 1).

  Returns:
    A list of `total_rounds` epsilons; element t-1 holds epsilon after round t.

  Raises:
    errors.UsageError: An argument is out of range; the message names the
      flag it comes from.
  """
  _check_noise_multiplier(noise_multiplier)
  _check_sampling_probability(sampling_probability)
  _check_rounds(total_rounds)
  _check_delta(delta)
  accountant = rdp.RdpAccountant()
  accountant.compose(_one_round_event(noise_multiplier, sampling_probability))
  orders = accountant.orders
  one_round = accountant.rdp
  return [
      float(rdp.compute_epsilon(orders, t * one_round, float(delta))[0])
      for t in range(1, int(total_rounds) + 1)
  ]


def default_delta(num_clients: int) -> float:
  """The default target delta, 1 / num_clients.

  Delta bounds the probability that the epsilon guarantee fails, so it must
  be small against 1 / (number of protected units), here clients. 1/n is a
  convenient, commonly used default, but it is on the weak side: for a
  meaningful guarantee choose `--dp_delta` well below 1/n.

  Args:
    num_clients: Number of clients n, >= 2 (so that delta < 1).

  Returns:
    1 / num_clients.

  Raises:
    errors.UsageError: `num_clients` is not an integer >= 2.
  """
  if (isinstance(num_clients, bool) or
      not isinstance(num_clients, numbers.Integral) or num_clients < 2):
    raise errors.UsageError(
        f'--num_clients={num_clients!r} must be an integer >= 2 to derive '
        'a default --dp_delta = 1/num_clients')
  return 1.0 / int(num_clients)
