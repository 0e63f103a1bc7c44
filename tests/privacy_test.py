"""DP-FedAvg epsilons against independent accountants and a closed form."""

import math

import dp_accounting
from dp_accounting import pld
from dp_accounting import rdp
import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline import privacy

# The RdpAccountant's default orders, written out independently.
_ORDERS = ([1 + x / 10 for x in range(1, 100)] + list(range(11, 64)) +
           [128, 256, 512, 1024])


def _reference_rdp_epsilon(sigma: float, q: float, rounds: int,
                           delta: float) -> float:
  event = dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(sigma))
  accountant = rdp.RdpAccountant()
  accountant.compose(event, count=rounds)
  return accountant.get_epsilon(delta)


def _epsilon_from_rdp_curve(orders, rdp_values, delta: float) -> float:
  """(eps, delta) from an RDP curve, as dp_accounting converts it.

  Balle et al. 2020 (arXiv 2004.00010, Proposition 12): at order a > 1,
  eps = r + log(1 - 1/a) - log(delta * a) / (a - 1); the accountant skips
  orders a <= 1.01 (numerically unstable) and returns 0 when
  delta^2 > 1 - exp(-r) (the KL bound); epsilon is the minimum over orders.
  """
  best = math.inf
  for a, r in zip(orders, rdp_values):
    if delta**2 + math.expm1(-r) > 0:
      eps = 0.0
    elif a > 1.01:
      eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
    else:
      eps = math.inf
    best = min(best, eps)
  return max(0.0, best)


@pytest.mark.parametrize('sigma,q,rounds,delta', [
    (1.0, 0.1, 100, 1e-5),
    (0.5, 0.1, 20, 1e-2),
    (1.3, 0.01, 1000, 1e-6),
    (3.0, 0.5, 7, 1e-3),
    (0.8, 1.0, 1, 1e-5),
])
def test_epsilon_equals_independent_rdp_accountant(sigma, q, rounds, delta):
  got = privacy.dp_epsilon(sigma, q, rounds, delta)
  want = _reference_rdp_epsilon(sigma, q, rounds, delta)
  assert got == pytest.approx(want, rel=1e-9)
  assert math.isfinite(got) and got > 0


def test_epsilon_by_round_matches_per_round_accountants():
  sigma, q, total, delta = 1.0, 0.1, 60, 1e-5
  by_round = privacy.dp_epsilon_by_round(sigma, q, total, delta)
  assert len(by_round) == total
  assert by_round[-1] == privacy.dp_epsilon(sigma, q, total, delta)
  assert all(b > a for a, b in zip(by_round, by_round[1:]))
  for t in (1, 2, 17, 60):
    assert by_round[t - 1] == pytest.approx(
        _reference_rdp_epsilon(sigma, q, t, delta), rel=1e-9)


def test_epsilon_by_round_single_round():
  assert privacy.dp_epsilon_by_round(2.0, 0.05, 1, 1e-4) == [
      privacy.dp_epsilon(2.0, 0.05, 1, 1e-4)]


def test_more_noise_fewer_rounds_lower_rate_give_smaller_epsilon():
  base = privacy.dp_epsilon(1.0, 0.1, 100, 1e-5)
  assert privacy.dp_epsilon(2.0, 0.1, 100, 1e-5) < base
  assert privacy.dp_epsilon(0.7, 0.1, 100, 1e-5) > base
  assert privacy.dp_epsilon(1.0, 0.1, 200, 1e-5) > base
  assert privacy.dp_epsilon(1.0, 0.1, 50, 1e-5) < base
  assert privacy.dp_epsilon(1.0, 0.05, 100, 1e-5) < base
  assert privacy.dp_epsilon(1.0, 0.2, 100, 1e-5) > base
  # A larger delta buys a smaller epsilon.
  assert privacy.dp_epsilon(1.0, 0.1, 100, 1e-3) < base


def test_default_orders_are_the_accountants():
  np.testing.assert_array_equal(rdp.RdpAccountant().orders, _ORDERS)


@pytest.mark.parametrize('sigma,rounds,delta', [
    (0.8, 1, 1e-5),
    (2.0, 50, 1e-5),
    (5.0, 500, 1e-6),
    (1.0, 10, 0.01),
])
def test_no_subsampling_matches_closed_form(sigma, rounds, delta):
  # Gaussian mechanism with sensitivity 1 and noise sigma: RDP alpha/(2 sigma^2)
  # at order alpha (Mironov 2017, arXiv 1702.07476), and T-fold composition
  # adds RDP at each order.
  curve = [rounds * a / (2 * sigma**2) for a in _ORDERS]
  want = _epsilon_from_rdp_curve(_ORDERS, curve, delta)
  assert privacy.dp_epsilon(sigma, 1.0, rounds, delta) == pytest.approx(
      want, rel=1e-6)
  assert privacy.dp_epsilon_by_round(sigma, 1.0, rounds, delta)[-1] == (
      pytest.approx(want, rel=1e-6))


def test_rdp_upper_bounds_pld_within_factor_two():
  sigma, q, rounds, delta = 1.0, 0.1, 100, 1e-5
  event = dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(sigma))
  pld_eps = pld.PLDAccountant().compose(event, count=rounds).get_epsilon(delta)
  rdp_eps = privacy.dp_epsilon(sigma, q, rounds, delta)
  assert pld_eps <= rdp_eps <= 2 * pld_eps


def test_default_delta():
  assert privacy.default_delta(100) == 0.01
  assert privacy.default_delta(2) == 0.5
  for bad in (1, 0, -5, 10.0):
    with pytest.raises(errors.UsageError, match='--num_clients'):
      privacy.default_delta(bad)


_GOOD = dict(noise_multiplier=1.0, sampling_probability=0.1, rounds=10,
             delta=1e-5)


@pytest.mark.parametrize('name,value,flag', [
    ('noise_multiplier', 0.0, '--dp_noise_multiplier'),
    ('noise_multiplier', -1.0, '--dp_noise_multiplier'),
    ('noise_multiplier', math.nan, '--dp_noise_multiplier'),
    ('noise_multiplier', math.inf, '--dp_noise_multiplier'),
    ('sampling_probability', 0.0, '--clients_per_round/--num_clients'),
    ('sampling_probability', -0.1, '--clients_per_round/--num_clients'),
    ('sampling_probability', 1.5, '--clients_per_round/--num_clients'),
    ('sampling_probability', math.nan, '--clients_per_round/--num_clients'),
    ('rounds', 0, '--total_rounds'),
    ('rounds', -3, '--total_rounds'),
    ('rounds', 2.5, '--total_rounds'),
    ('rounds', True, '--total_rounds'),
    ('delta', 0.0, '--dp_delta'),
    ('delta', 1.0, '--dp_delta'),
    ('delta', -1e-5, '--dp_delta'),
    ('delta', math.nan, '--dp_delta'),
])
def test_invalid_arguments_name_the_flag(name, value, flag):
  args = dict(_GOOD, **{name: value})
  with pytest.raises(errors.UsageError, match=flag):
    privacy.dp_epsilon(**args)
  by_round_args = dict(args)
  by_round_args['total_rounds'] = by_round_args.pop('rounds')
  with pytest.raises(errors.UsageError, match=flag):
    privacy.dp_epsilon_by_round(**by_round_args)
