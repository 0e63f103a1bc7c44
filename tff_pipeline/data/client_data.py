"""`tff.simulation.datasets.ClientData` backed by in-memory NumPy arrays.

A partition assigns example indices to clients. `ArrayClientData` stores the
examples once, reordered so that each client's examples are contiguous, and
serves each client's dataset as a slice. Building a client's `tf.data.Dataset`
from a NumPy slice (not from a slice of a big graph constant) keeps the
serialized dataset that TFF ships to its executor as small as the client's own
data.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


def client_id_for_index(index: int, num_clients: int) -> str:
  """Zero-padded client ids sort the same way as their indices."""
  width = max(4, len(str(num_clients - 1)))
  return f'{index:0{width}d}'


class ArrayClientData(tff.simulation.datasets.ClientData):
  """ClientData whose clients are index sets into shared NumPy arrays.

  Args:
    arrays: Feature name -> array; all arrays share their first dimension.
      Elements are yielded as `OrderedDict`s with these keys, in this order.
    client_indices: One integer array per client, indexing `arrays`.
  """

  def __init__(
      self,
      arrays: Mapping[str, np.ndarray],
      client_indices: Sequence[np.ndarray],
  ):
    super().__init__()
    if not client_indices:
      raise ValueError('ArrayClientData needs at least one client')
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f'arrays differ in length: {lengths}')
    order = np.concatenate(
        [np.asarray(i, dtype=np.int64) for i in client_indices]
    )
    self._arrays = collections.OrderedDict(
        (name, np.ascontiguousarray(array[order]))
        for name, array in arrays.items()
    )
    sizes = np.array([len(i) for i in client_indices], dtype=np.int64)
    self._offsets = np.concatenate([[0], np.cumsum(sizes)])
    num_clients = len(client_indices)
    self._client_ids = [
        client_id_for_index(i, num_clients) for i in range(num_clients)
    ]
    self._index_of = {cid: i for i, cid in enumerate(self._client_ids)}
    self._element_type_structure = collections.OrderedDict(
        (name, tf.TensorSpec(array.shape[1:], tf.as_dtype(array.dtype)))
        for name, array in self._arrays.items()
    )

  @property
  def client_ids(self) -> list[str]:
    return list(self._client_ids)

  @property
  def element_type_structure(self):
    return self._element_type_structure

  def client_index(self, client_id: str) -> int:
    try:
      return self._index_of[client_id]
    except KeyError:
      raise ValueError(f'unknown client id {client_id!r}') from None

  def num_examples(self, client_id: str) -> int:
    i = self.client_index(client_id)
    return int(self._offsets[i + 1] - self._offsets[i])

  def client_sizes(self) -> np.ndarray:
    """Number of examples of every client, in `client_ids` order."""
    return np.diff(self._offsets)

  def client_arrays(self, client_id: str) -> collections.OrderedDict:
    """The client's examples as NumPy arrays (views, do not modify)."""
    i = self.client_index(client_id)
    start, stop = self._offsets[i], self._offsets[i + 1]
    return collections.OrderedDict(
        (name, array[start:stop]) for name, array in self._arrays.items()
    )

  def all_arrays(self) -> collections.OrderedDict:
    """All examples, client after client, in `client_ids` order."""
    return collections.OrderedDict(self._arrays)

  def client_of_example(self) -> np.ndarray:
    """For each row of `all_arrays()`, the index of the client it belongs to."""
    return np.repeat(np.arange(len(self._client_ids)), self.client_sizes())

  def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(self.client_arrays(client_id))

  @property
  def serializable_dataset_fn(self):
    """A traceable `client_id -> Dataset` function (embeds all the data).

    Only needed by `dataset_computation`; the training loop uses
    `create_tf_dataset_for_client`, which ships just the client's own slice.
    """
    keys = tf.constant(self._client_ids)
    starts = tf.constant(self._offsets[:-1])
    stops = tf.constant(self._offsets[1:])
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            keys, tf.range(len(self._client_ids), dtype=tf.int64)
        ),
        default_value=-1,
    )
    arrays = self._arrays

    def dataset_fn(client_id):
      i = table.lookup(client_id)
      tf.debugging.assert_non_negative(i, message='unknown client id')
      start, stop = starts[i], stops[i]
      return tf.data.Dataset.from_tensor_slices(
          collections.OrderedDict(
              (name, tf.constant(array)[start:stop])
              for name, array in arrays.items()
          )
      )

    return dataset_fn
