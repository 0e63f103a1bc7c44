"""Synthetic linear-regression shards whose answers can be checked by hand.

The teaching case is one feature and y = 2x + 1 + noise, split IID over
clients. The general case has `num_features` features and per-client
heterogeneity, the kinds surveyed by Kairouz et al. 2021, "Advances and Open
Problems in Federated Learning" (arXiv 1912.04977), section 3.1:

  * feature shift: client k's features are N(mu_k, 1) with
    mu_k ~ N(0, feature_shift^2) per feature;
  * concept shift: client k's true weights are w_k = w* + delta_k with
    delta_k ~ N(0, weight_heterogeneity^2);
  * noise: y = x . w_k + b + N(0, noise_std^2);
  * quantity skew: Pareto client sizes with shape `size_exponent`
    (0 means equal sizes).

The federated objective weights client k by n_k / n, so it equals the pooled
mean squared error; its minimiser is the ordinary least-squares fit on all
clients' data together (`RegressionShards.pooled_optimum`).
"""

from __future__ import annotations

import collections
import dataclasses
import io

import numpy as np

from tff_pipeline import errors
from tff_pipeline import settings
from tff_pipeline.data import client_data as client_data_lib
from tff_pipeline.data import partition

# Separates this generator's random stream from the others derived from --seed.
_REGRESSION_STREAM = 0x5245_4752


@dataclasses.dataclass(frozen=True)
class RegressionSpec:
  """How to generate the shards. The defaults are the teaching case.

  The settings with a flag are declared below; `num_clients` is the shared
  `--num_clients` (`config.NUM_CLIENTS`) and `seed` the shared `--seed`, the
  seed of every random choice.
  """

  num_clients: int = 10
  examples_per_client: int = settings.setting(
      50, help='Mean number of examples per client.')
  num_features: int = settings.setting(1, help='Number of features d.')
  true_weights: tuple[float, ...] = settings.setting(
      (), help='True weights w* (d values); empty means 2.0 each.')
  true_bias: float = settings.setting(1.0, help='True bias b.')
  noise_std: float = settings.setting(0.1, help='Std of the label noise.')
  feature_shift: float = settings.setting(
      0.0, help='Std of each client\'s feature mean (covariate shift).')
  weight_heterogeneity: float = settings.setting(
      0.0, help='Std of each client\'s deviation from w* (concept shift).')
  size_exponent: float = settings.setting(
      0.0, help='Pareto shape of client sizes; 0 means equal sizes.')
  seed: int = 0

  def weights(self) -> np.ndarray:
    if not self.true_weights:
      return np.full(self.num_features, 2.0)
    return np.asarray(self.true_weights, dtype=np.float64)

  def validate(self) -> None:
    checks = [
        (self.num_clients >= 1, '--num_clients', 'must be positive'),
        (self.examples_per_client >= 1, '--examples_per_client',
         'must be positive'),
        (self.num_features >= 1, '--num_features', 'must be positive'),
        (self.noise_std >= 0, '--noise_std', 'must be >= 0'),
        (self.feature_shift >= 0, '--feature_shift', 'must be >= 0'),
        (self.weight_heterogeneity >= 0, '--weight_heterogeneity',
         'must be >= 0'),
        (self.size_exponent >= 0, '--size_exponent', 'must be >= 0'),
    ]
    for ok, flag, what in checks:
      if not ok:
        raise errors.UsageError(f'{flag}={getattr(self, flag[2:])} {what}')
    # NaN fails every check above, but inf passes some, and nothing checked
    # the bias and weights: non-finite values gave non-finite data.
    for flag, values in (
        ('--true_weights', self.true_weights),
        ('--true_bias', [self.true_bias]),
        ('--noise_std', [self.noise_std]),
        ('--feature_shift', [self.feature_shift]),
        ('--weight_heterogeneity', [self.weight_heterogeneity]),
        ('--size_exponent', [self.size_exponent])):
      if not all(settings.finite(v) for v in values):
        raise errors.UsageError(
            f'{flag}={",".join(str(v) for v in values)} must be finite')
    if self.seed < 0:
      raise errors.UsageError(f'--seed={self.seed} must be >= 0')
    if self.true_weights and len(self.true_weights) != self.num_features:
      raise errors.UsageError(
          f'--true_weights has {len(self.true_weights)} values but '
          f'--num_features={self.num_features}'
      )


@dataclasses.dataclass(frozen=True)
class RegressionShards:
  """Generated data, kept together with the truth it was generated from.

  Attributes:
    x: float32 (n, d) features, client after client.
    y: float32 (n, 1) labels.
    client_ids: int (n,) client index of each row.
    client_weights: (num_clients, d) true weights w_k.
    spec: The spec the data came from.
  """

  x: np.ndarray
  y: np.ndarray
  client_ids: np.ndarray
  client_weights: np.ndarray
  spec: RegressionSpec

  @property
  def num_clients(self) -> int:
    return self.spec.num_clients

  def client_data(self) -> client_data_lib.ArrayClientData:
    indices = [np.flatnonzero(self.client_ids == k)
               for k in range(self.num_clients)]
    return client_data_lib.ArrayClientData(
        collections.OrderedDict(x=self.x, y=self.y), indices
    )

  def pooled_optimum(self) -> np.ndarray:
    """Least-squares [w..., b] on all clients' data, in float64.

    Weighting client k by n_k/n in the federated objective makes it the
    pooled mean squared error, so this is its exact minimiser.
    """
    return least_squares(self.x, self.y)

  def npz_bytes(self) -> bytes:
    """An .npz with arrays `x`, `y`, `client_ids`, to recheck the optimum."""
    buffer = io.BytesIO()
    np.savez(buffer, x=self.x, y=self.y, client_ids=self.client_ids)
    return buffer.getvalue()


def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Ordinary least squares with intercept: returns [w_1..w_d, b]."""
  design = np.concatenate(
      [np.asarray(x, np.float64), np.ones((len(x), 1))], axis=1
  )
  solution, *_ = np.linalg.lstsq(
      design, np.asarray(y, np.float64).reshape(-1), rcond=None
  )
  return solution


def make_regression_shards(spec: RegressionSpec) -> RegressionShards:
  """Generates the shards described by `spec`, reproducibly from its seed."""
  spec.validate()
  rng = np.random.default_rng([spec.seed, _REGRESSION_STREAM])
  d = spec.num_features
  sizes = partition.power_law_sizes(
      spec.num_clients * spec.examples_per_client,
      spec.num_clients,
      spec.size_exponent,
      rng,
      minimum=1,
  )
  base = spec.weights()
  xs, ys, ids, client_weights = [], [], [], []
  for k, n in enumerate(sizes):
    # abs(): validated >= 0, but NumPy refuses a scale of -0.0.
    mean = rng.normal(0.0, abs(spec.feature_shift), size=d)
    w_k = base + rng.normal(0.0, abs(spec.weight_heterogeneity), size=d)
    if spec.num_features == 1 and spec.feature_shift == 0:
      # Teaching case: x uniform on [-1, 1], easy to plot and to reason about.
      x = rng.uniform(-1.0, 1.0, size=(n, d))
    else:
      x = mean + rng.normal(0.0, 1.0, size=(n, d))
    y = x @ w_k + spec.true_bias + rng.normal(0.0, abs(spec.noise_std), size=n)
    xs.append(x)
    ys.append(y)
    ids.append(np.full(n, k))
    client_weights.append(w_k)
  return RegressionShards(
      x=np.concatenate(xs).astype(np.float32),
      y=np.concatenate(ys).astype(np.float32).reshape(-1, 1),
      client_ids=np.concatenate(ids).astype(np.int32),
      client_weights=np.stack(client_weights),
      spec=spec,
  )
