"""Feature-distribution skew: a minority of clients see transformed inputs.

Kairouz et al. 2021 ("Advances and Open Problems in Federated Learning",
arXiv 1912.04977, sec. 3.1) list feature distribution skew among the kinds of
non-IID data: the same label looks different on different clients (other
handwriting, cameras, scanners). Here `--feature_skew` transforms every image
of a random `--feature_skew_fraction` of the clients (train and held-out
data alike; the central test set is untouched):

  * `invert`: 1 - x, white digits become black on white;
  * `rotate90`: the 28x28 image turned a quarter turn.

Weighted FedAvg serves such a minority poorly early in training, which makes
it the textbook case for fairness-aware reweighting (q-FFL, Li et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tff_pipeline import heterogeneity
from tff_pipeline import registry

Transform = Callable[[np.ndarray], np.ndarray]
FEATURE_SKEWS: registry.Registry[Transform | None] = registry.Registry(
    'feature skew', '--feature_skew')
FEATURE_SKEWS.register('none', 'all clients see the same kind of images')(None)


@FEATURE_SKEWS.register('invert', 'minority clients see 1 - x')
def _invert(x: np.ndarray) -> np.ndarray:
  return (1.0 - x).astype(x.dtype)


@FEATURE_SKEWS.register('rotate90', 'minority clients see images rotated 90')
def _rotate90(x: np.ndarray) -> np.ndarray:
  return np.rot90(x.reshape(-1, 28, 28), axes=(1, 2)).reshape(len(x), -1)


def skewed_clients(num_clients: int, fraction: float, seed: int) -> np.ndarray:
  """Indices of the round(fraction * num_clients) clients in the minority.

  The same clients as the `minority` capacity profile's slow ones, for the
  same fraction and seed.
  """
  return heterogeneity.minority_clients(num_clients, fraction, seed)


def apply_feature_skew(
    x: np.ndarray,
    client_indices: list[np.ndarray],
    name: str,
    fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (x with the minority clients' rows transformed, their indices).

  `x` is not modified; when the skew is `none` it is returned as is.
  """
  transform = FEATURE_SKEWS.get(name)
  minority = skewed_clients(len(client_indices), fraction, seed)
  if transform is None or not len(minority):
    return x, np.array([], dtype=np.int64)
  rows = np.concatenate([client_indices[k] for k in minority])
  skewed = np.array(x, copy=True)
  skewed[rows] = transform(x[rows])
  return skewed, minority
