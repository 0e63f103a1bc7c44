"""Partitions of a labelled dataset into federated clients.

Each partition maps `(labels, num_clients, rng, params)` to one index array per
client. Every example lands in exactly one client, and every random choice
comes from the `numpy.random.Generator` built from the run's `--seed`.

Partitions (selected with `--partition`):
  * `iid`: a uniform random split into equal-size clients.
  * `shards`: the pathological non-IID split of McMahan et al. 2017,
    "Communication-Efficient Learning of Deep Networks from Decentralized Data"
    (arXiv 1602.05629): sort by label, cut into `num_clients *
    shards_per_client` equal shards, give each client `shards_per_client` of
    them. We also avoid giving a client two shards of the same label whenever
    the label counts allow it, so that with label-pure shards every client
    holds exactly `shards_per_client` labels.
  * `dirichlet`: label skew in which each label is spread over clients by
    proportions drawn from Dirichlet(alpha), as in Hsu et al. 2019,
    "Measuring the Effects of Non-Identical Data Distribution" (arXiv
    1909.06335). Smaller alpha means more skew.
  * `quantity_skew`: IID labels, power-law client sizes (Pareto-distributed
    with shape `quantity_skew_exponent`; smaller means more skew).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from tff_pipeline import errors
from tff_pipeline import registry
from tff_pipeline import settings
from tff_pipeline.data import client_data as client_data_lib


@dataclasses.dataclass(frozen=True)
class PartitionParams:
  """Parameters of the partitions; each partition reads the ones it needs."""

  shards_per_client: int = settings.setting(
      2, help='shards: label-sorted shards per client.')
  dirichlet_alpha: float = settings.setting(
      0.5, help='dirichlet: concentration; smaller is more skewed.')
  quantity_skew_exponent: float = settings.setting(
      1.5, help='quantity_skew: Pareto shape of client sizes; smaller is '
      'more skewed.')
  min_examples_per_client: int = settings.internal(
      10, 'lower bound on a client\'s size for `dirichlet` and '
      '`quantity_skew`; no flag, the library\'s choice')


PartitionFn = Callable[
    [np.ndarray, int, np.random.Generator, PartitionParams], list[np.ndarray]
]

PARTITIONS: registry.Registry[PartitionFn] = registry.Registry(
    'partition', '--partition'
)


def _check_sizes(num_examples: int, num_clients: int, minimum: int) -> None:
  if num_clients < 1:
    raise errors.UsageError(f'--num_clients={num_clients} must be positive')
  if num_clients * minimum > num_examples:
    raise errors.UsageError(
        f'--num_clients={num_clients} is too many for {num_examples} examples'
        f' (each client needs at least {minimum})'
    )


def _smallest_client(num_examples: int, num_clients: int,
                     params: PartitionParams) -> int:
  """The smallest client size of a random-size partition, checked.

  `min_examples_per_client`, lowered to an equal share when the examples
  cannot give every client that many. Raises `errors.UsageError` unless
  every client can have max(that, 1) examples.
  """
  _check_sizes(num_examples, num_clients, 1)  # Before dividing by it.
  minimum = min(params.min_examples_per_client, num_examples // num_clients)
  _check_sizes(num_examples, num_clients, max(minimum, 1))
  return minimum


@PARTITIONS.register('iid', 'uniform random split into equal-size clients')
def iid(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    params: PartitionParams,
) -> list[np.ndarray]:
  del params
  _check_sizes(len(labels), num_clients, 1)
  return [np.sort(part) for part in
          np.array_split(rng.permutation(len(labels)), num_clients)]


def _shard_assignment(
    shard_labels: np.ndarray,
    num_clients: int,
    shards_per_client: int,
    rng: np.random.Generator,
) -> list[list[int]]:
  """Assigns shards to clients, avoiding repeated labels within a client.

  Works client by client. A label with as many shards left as there are
  clients left must be taken now (each client can take at most one shard of
  it), which keeps the remaining problem solvable; the other labels are drawn
  with probability proportional to the shards they have left.
  """
  by_label: dict[int, list[int]] = {}
  for shard in rng.permutation(len(shard_labels)):
    by_label.setdefault(int(shard_labels[shard]), []).append(int(shard))
  if max(len(s) for s in by_label.values()) > num_clients:
    # Some label has more shards than there are clients: repeats are
    # unavoidable, so fall back to the paper's plain random assignment.
    shards = rng.permutation(len(shard_labels))
    return [
        sorted(shards[k * shards_per_client:(k + 1) * shards_per_client])
        for k in range(num_clients)
    ]
  assignment = []
  for clients_left in range(num_clients, 0, -1):
    labels = sorted(by_label)
    left = np.array([len(by_label[label]) for label in labels])
    forced = [label for label, n in zip(labels, left) if n == clients_left]
    optional = [
        (label, n) for label, n in zip(labels, left)
        if 0 < n < clients_left
    ]
    chosen = list(forced)
    need = shards_per_client - len(chosen)
    if need > 0:
      weights = np.array([n for _, n in optional], dtype=np.float64)
      picks = rng.choice(
          len(optional), size=need, replace=False, p=weights / weights.sum()
      )
      chosen += [optional[i][0] for i in sorted(picks)]
    assignment.append(sorted(by_label[label].pop() for label in chosen))
  return assignment


@PARTITIONS.register(
    'shards',
    'sort by label, cut into shards, give each client --shards_per_client '
    '(McMahan et al. 2017)',
)
def shards(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    params: PartitionParams,
) -> list[np.ndarray]:
  per_client = params.shards_per_client
  if per_client < 1:
    raise errors.UsageError(
        f'--shards_per_client={per_client} must be positive'
    )
  _check_sizes(len(labels), num_clients, per_client)
  # A stable sort keeps the dataset's order within a label, as in the paper.
  by_label = np.argsort(labels, kind='stable')
  shard_list = np.array_split(by_label, num_clients * per_client)
  shard_labels = np.array(
      [np.bincount(labels[s]).argmax() for s in shard_list]
  )
  assignment = _shard_assignment(shard_labels, num_clients, per_client, rng)
  return [
      np.sort(np.concatenate([shard_list[s] for s in client_shards]))
      for client_shards in assignment
  ]


MIN_DIRICHLET_ALPHA = 1e-3


@PARTITIONS.register(
    'dirichlet',
    'per-label client proportions ~ Dirichlet(--dirichlet_alpha) '
    '(Hsu et al. 2019)',
)
def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    params: PartitionParams,
) -> list[np.ndarray]:
  alpha = params.dirichlet_alpha
  # NumPy's Dirichlet sampler takes time ~ 1/alpha below 1e-3 (hangs near
  # 1e-8); such alphas already give one label per client.
  if not MIN_DIRICHLET_ALPHA <= alpha < float('inf'):
    raise errors.UsageError(
        f'--dirichlet_alpha={alpha} must be a finite number >= '
        f'{MIN_DIRICHLET_ALPHA}'
    )
  minimum = _smallest_client(len(labels), num_clients, params)
  classes = np.unique(labels)
  max_tries = 1000
  for _ in range(max_tries):
    # Count the clients' sizes first and split only an accepted draw: with
    # many clients, splitting every rejected draw took minutes.
    draws = []
    sizes = np.zeros(num_clients, np.int64)
    for c in classes:
      members = rng.permutation(np.flatnonzero(labels == c))
      proportions = rng.dirichlet(np.full(num_clients, alpha))
      cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
      draws.append((members, cuts))
      sizes += np.diff(cuts, prepend=0, append=len(members))
    if sizes.min() >= minimum:
      parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
      for members, cuts in draws:
        for k, piece in enumerate(np.split(members, cuts)):
          parts[k].append(piece)
      return [np.sort(np.concatenate(p)) for p in parts]
  raise errors.UsageError(
      f'--dirichlet_alpha={alpha} with --num_clients={num_clients} left some '
      f'client with fewer than {minimum} examples in {max_tries} draws; use a '
      'larger alpha or fewer clients'
  )


def power_law_sizes(
    total: int,
    num_clients: int,
    exponent: float,
    rng: np.random.Generator,
    minimum: int = 1,
) -> np.ndarray:
  """Client sizes summing to `total`, Pareto-distributed above `minimum`.

  Args:
    total: Sum of the sizes.
    num_clients: Number of sizes.
    exponent: Pareto shape `a` (> 0); smaller values give heavier tails. An
      exponent of 0 gives equal sizes.
    rng: Source of randomness.
    minimum: Smallest allowed size.
  """
  if exponent < 0:
    raise errors.UsageError(f'power-law exponent {exponent} must be >= 0')
  _check_sizes(total, num_clients, minimum)
  if exponent == 0:
    shares = np.ones(num_clients)
  else:
    shares = rng.pareto(exponent, size=num_clients) + 1.0
    if not np.all(np.isfinite(shares)):
      raise errors.UsageError(
          f'power-law exponent {exponent} is too small: client sizes '
          'overflow; use a larger one'
      )
  spare = total - num_clients * minimum
  exact = shares / shares.sum() * spare
  sizes = np.floor(exact).astype(np.int64)
  # Largest remainders get the leftover examples, so the sum is exact.
  leftover = spare - int(sizes.sum())
  sizes[np.argsort(exact - sizes, kind='stable')[::-1][:leftover]] += 1
  return sizes + minimum


@PARTITIONS.register(
    'quantity_skew',
    'IID labels, Pareto(--quantity_skew_exponent) client sizes',
)
def quantity_skew(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    params: PartitionParams,
) -> list[np.ndarray]:
  exponent = params.quantity_skew_exponent
  if not exponent > 0:
    raise errors.UsageError(
        f'--quantity_skew_exponent={exponent} must be positive'
    )
  sizes = power_law_sizes(
      len(labels), num_clients, exponent, rng,
      max(_smallest_client(len(labels), num_clients, params), 1))
  cuts = np.cumsum(sizes)[:-1]
  return [np.sort(p) for p in np.split(rng.permutation(len(labels)), cuts)]


def partition_indices(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    params: PartitionParams = PartitionParams(),
) -> list[np.ndarray]:
  """Splits example indices into `num_clients` clients with partition `name`.

  The result depends only on (name, labels, num_clients, seed, params).
  """
  builder = PARTITIONS.get(name)
  if seed < 0:
    raise errors.UsageError(f'--seed={seed} must be >= 0')
  rng = np.random.default_rng([seed, _PARTITION_STREAM])
  return builder(np.asarray(labels), num_clients, rng, params)


# Separates the partition's random stream from the run's other streams, which
# are also derived from --seed.
_PARTITION_STREAM = 0x5041_5254


def label_histograms(
    labels: np.ndarray,
    client_indices: Sequence[np.ndarray],
    num_classes: int,
) -> np.ndarray:
  """Per-client label counts, shape (num_clients, num_classes)."""
  return np.stack([
      np.bincount(labels[idx], minlength=num_classes)
      for idx in client_indices
  ])


def client_data_histograms(
    data: client_data_lib.ArrayClientData,
    num_classes: int,
    label_key: str = 'y',
) -> np.ndarray:
  """Per-client label counts of a ClientData, in `client_ids` order."""
  return np.stack([
      np.bincount(data.client_arrays(cid)[label_key].reshape(-1),
                  minlength=num_classes)
      for cid in data.client_ids
  ])
