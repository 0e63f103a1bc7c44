"""Hostile input for the partitions: exact partitions or a UsageError.

See tests/fuzzing.py.
"""

from __future__ import annotations

import re

import numpy as np
from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tff_pipeline import errors
from tff_pipeline.data import partition


@st.composite
def _labels(draw):
  """Label arrays of 0..400 examples, 1..12 classes, various int dtypes."""
  size = draw(st.integers(0, 400))
  num_labels = draw(st.integers(1, 12))
  values = draw(st.lists(st.integers(0, num_labels - 1), min_size=size,
                         max_size=size)) if size < 40 else (
      np.random.default_rng(draw(st.integers(0, 1000)))
      .integers(0, num_labels, size))
  dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8]))
  return np.asarray(values, dtype=dtype).reshape(-1)


@fuzzing.deterministic(250)
@given(name=st.sampled_from(partition.PARTITIONS.names()),
       labels=_labels(),
       num_clients=fuzzing.mostly(st.integers(1, 30), fuzzing.ANY_INT),
       seed=fuzzing.mostly(st.integers(0, 2**64), fuzzing.ANY_INT),
       shards_per_client=fuzzing.mostly(st.integers(1, 5), fuzzing.ANY_INT),
       dirichlet_alpha=fuzzing.mostly(st.floats(1e-3, 1e4), fuzzing.ANY_FLOAT),
       quantity_skew_exponent=fuzzing.mostly(st.floats(0.05, 10), fuzzing.ANY_FLOAT),
       min_examples_per_client=fuzzing.mostly(st.integers(0, 5),
                                       st.integers(-3, 30)))
@example(name='dirichlet', labels=np.arange(10) % 3, num_clients=0, seed=0,
         shards_per_client=2, dirichlet_alpha=0.5, quantity_skew_exponent=1.5,
         min_examples_per_client=10)
@example(name='quantity_skew', labels=np.arange(10) % 3, num_clients=0,
         seed=0, shards_per_client=2, dirichlet_alpha=0.5,
         quantity_skew_exponent=1.5, min_examples_per_client=10)
@example(name='iid', labels=np.arange(10) % 3, num_clients=2, seed=-1,
         shards_per_client=2, dirichlet_alpha=0.5, quantity_skew_exponent=1.5,
         min_examples_per_client=10)
@example(name='dirichlet', labels=np.arange(100) % 3, num_clients=3, seed=0,
         shards_per_client=2, dirichlet_alpha=1e-300,
         quantity_skew_exponent=1.5, min_examples_per_client=0)
@example(name='quantity_skew', labels=np.arange(100) % 3, num_clients=3,
         seed=0, shards_per_client=2, dirichlet_alpha=0.5,
         quantity_skew_exponent=1e-5, min_examples_per_client=10)
def test_partition_is_exact_or_a_usage_error(
    name, labels, num_clients, seed, shards_per_client, dirichlet_alpha,
    quantity_skew_exponent, min_examples_per_client):
  params = partition.PartitionParams(
      shards_per_client=shards_per_client,
      dirichlet_alpha=dirichlet_alpha,
      quantity_skew_exponent=quantity_skew_exponent,
      min_examples_per_client=min_examples_per_client,
  )
  try:
    parts = partition.partition_indices(name, labels, num_clients, seed,
                                        params)
  except errors.UsageError as e:
    event(f'{name}: usage error')
    assert re.search(r'--[a-z_]+|exponent', str(e)), str(e)
    return
  event(f'{name}: partition')
  n = len(labels)
  assert len(parts) == num_clients
  everything = np.concatenate(parts)
  assert everything.dtype.kind in 'iu'
  np.testing.assert_array_equal(np.sort(everything), np.arange(n))
  assert all(np.all(np.diff(p) > 0) for p in parts)  # Sorted, no repeats.
  sizes = np.array([len(p) for p in parts])
  if name == 'iid':
    assert sizes.max() - sizes.min() <= 1
  elif name == 'shards':
    shard = n // (num_clients * shards_per_client)
    assert sizes.min() >= shards_per_client * shard
    assert sizes.max() <= shards_per_client * (shard + 1)
  else:
    minimum = min(min_examples_per_client, n // num_clients)
    if name == 'quantity_skew':
      minimum = max(minimum, 1)
    assert sizes.min() >= minimum
