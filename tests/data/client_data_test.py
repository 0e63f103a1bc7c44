"""ArrayClientData serves exactly each client's examples."""

import collections

import numpy as np
import tensorflow as tf

from tff_pipeline.data import client_data


def _data():
  x = np.arange(20, dtype=np.float32).reshape(10, 2)
  y = np.arange(10, dtype=np.int32)
  parts = [np.array([3, 1]), np.array([0, 2, 9]), np.array([4, 5, 6, 7, 8])]
  return client_data.ArrayClientData(collections.OrderedDict(x=x, y=y), parts)


def test_client_datasets_hold_the_clients_examples():
  data = _data()
  assert data.client_ids == ['0000', '0001', '0002']
  np.testing.assert_array_equal(data.client_sizes(), [2, 3, 5])
  ys = [[int(e['y']) for e in data.create_tf_dataset_for_client(c)]
        for c in data.client_ids]
  assert ys == [[3, 1], [0, 2, 9], [4, 5, 6, 7, 8]]
  np.testing.assert_array_equal(data.client_of_example(),
                                [0, 0, 1, 1, 1, 2, 2, 2, 2, 2])


def test_serializable_dataset_fn_matches_eager_datasets():
  data = _data()
  fn = data.serializable_dataset_fn
  for cid in data.client_ids:
    eager = [e['y'].numpy() for e in data.create_tf_dataset_for_client(cid)]
    traced = [e['y'].numpy() for e in fn(tf.constant(cid))]
    assert eager == traced


def test_element_spec():
  spec = _data().element_type_structure
  assert spec['x'] == tf.TensorSpec([2], tf.float32)
  assert spec['y'] == tf.TensorSpec([], tf.int32)
