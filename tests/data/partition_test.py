"""Partitions: real properties, for every partition in the registry."""

import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline.data import partition

RNG = np.random.default_rng(1234)
LABELS = RNG.integers(0, 10, size=6000)


@pytest.mark.parametrize('name', partition.PARTITIONS.names())
def test_every_example_lands_in_exactly_one_client(name):
  parts = partition.partition_indices(name, LABELS, 20, seed=3)
  assert len(parts) == 20
  everything = np.concatenate(parts)
  assert len(everything) == len(LABELS)
  np.testing.assert_array_equal(np.sort(everything), np.arange(len(LABELS)))
  assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize('name', partition.PARTITIONS.names())
def test_same_seed_same_partition_other_seed_other_partition(name):
  a = partition.partition_indices(name, LABELS, 20, seed=7)
  b = partition.partition_indices(name, LABELS, 20, seed=7)
  c = partition.partition_indices(name, LABELS, 20, seed=8)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_clients_have_equal_sizes_and_all_labels():
  parts = partition.partition_indices('iid', LABELS, 20, seed=0)
  assert {len(p) for p in parts} == {300}
  hist = partition.label_histograms(LABELS, parts, 10)
  assert (hist > 0).all()


@pytest.mark.parametrize('shards_per_client', [1, 2, 3])
def test_label_pure_shards_give_exactly_that_many_labels(shards_per_client):
  # 10 labels x 60 examples; 20 clients x s shards of 60/(2s)... choose sizes
  # so that every shard is label-pure: shard size divides each label count.
  num_clients = 20
  num_shards = num_clients * shards_per_client
  per_label = num_shards // 10 * 30
  labels = np.repeat(np.arange(10), per_label)
  np.random.default_rng(0).shuffle(labels)
  params = partition.PartitionParams(shards_per_client=shards_per_client)
  parts = partition.partition_indices('shards', labels, num_clients, 5, params)
  hist = partition.label_histograms(labels, parts, 10)
  assert ((hist > 0).sum(axis=1) == shards_per_client).all()
  assert {len(p) for p in parts} == {30 * shards_per_client}


def test_mnist_paper_shards(mnist_arrays):
  parts = partition.partition_indices(
      'shards', mnist_arrays.train_y, 100, seed=0,
      params=partition.PartitionParams(shards_per_client=2))
  assert {len(p) for p in parts} == {600}
  labels_per_client = (partition.label_histograms(
      mnist_arrays.train_y, parts, 10) > 0).sum(axis=1)
  # MNIST label counts are not multiples of 300, so a few shards straddle two
  # labels; still, no client gets more than 4 labels and most get exactly 2.
  assert labels_per_client.max() <= 4
  assert np.mean(labels_per_client == 2) >= 0.8


def _mean_label_skew(parts, labels):
  """Mean total-variation distance of client label mix from the global mix."""
  hist = partition.label_histograms(labels, parts, 10).astype(float)
  client_mix = hist / hist.sum(axis=1, keepdims=True)
  global_mix = np.bincount(labels, minlength=10) / len(labels)
  return float(np.mean(0.5 * np.abs(client_mix - global_mix).sum(axis=1)))


def test_lower_dirichlet_alpha_gives_more_skew():
  skews = []
  for alpha in (100.0, 1.0, 0.1):
    params = partition.PartitionParams(dirichlet_alpha=alpha,
                                       min_examples_per_client=5)
    parts = partition.partition_indices('dirichlet', LABELS, 20, 0, params)
    skews.append(_mean_label_skew(parts, LABELS))
  assert skews[0] < 0.1 < skews[1] < skews[2], skews


def test_quantity_skew_sizes_are_heavy_tailed():
  parts = partition.partition_indices(
      'quantity_skew', LABELS, 50, seed=0,
      params=partition.PartitionParams(quantity_skew_exponent=1.0))
  sizes = np.array([len(p) for p in parts])
  assert sizes.sum() == len(LABELS)
  assert sizes.min() >= 10
  assert sizes.max() > 5 * np.median(sizes)


def test_power_law_sizes_sum_exactly():
  rng = np.random.default_rng(0)
  for exponent in (0.0, 0.5, 2.0):
    sizes = partition.power_law_sizes(1001, 7, exponent, rng, minimum=3)
    assert sizes.sum() == 1001 and sizes.min() >= 3


def test_unknown_partition_lists_valid_names():
  with pytest.raises(errors.UsageError,
                     match="--partition='nope'.*dirichlet, iid, quantity_skew, shards"):
    partition.partition_indices('nope', LABELS, 10, 0)


def test_too_many_clients_is_a_usage_error():
  with pytest.raises(errors.UsageError, match='--num_clients=7000'):
    partition.partition_indices('iid', LABELS, 7000, 0)
  with pytest.raises(errors.UsageError, match='--shards_per_client=0'):
    partition.partition_indices(
        'shards', LABELS, 10, 0, partition.PartitionParams(shards_per_client=0))
