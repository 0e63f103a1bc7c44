"""The struct helpers of `tff_pipeline._structure`, against plain Python."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import _structure
from tff_pipeline import settings

# Keys out of sorted order: TFF keeps this order, tf.nest would sort them.
VALUE_TYPE = tff.StructWithPythonType([
    ('z', tff.TensorType(np.float32, [2])),
    ('a', tff.StructWithPythonType([tff.TensorType(np.int32),
                                    tff.TensorType(np.float64, [1])], tuple)),
], collections.OrderedDict)


@pytest.mark.parametrize('value, finite', [
    (1.5, True), (0, True), (-3, True), (float('inf'), False),
    (float('nan'), False), (10**400, False), ('1.0', False), (None, False),
    (np.float32(2.0), True), (np.float64(np.inf), False)])
def test_finite_number(value, finite):
  assert settings.finite(value) is finite


def test_leaf_types_are_in_tff_order():
  assert [t.dtype for t in _structure.leaf_types(VALUE_TYPE)] == [
      np.float32, np.int32, np.float64]
  scalar = tff.TensorType(np.float32)
  assert _structure.leaf_types(scalar) == [scalar]


def test_flatten_then_pack_rebuilds_the_containers():
  value = collections.OrderedDict(
      z=tf.constant([1.0, 2.0]), a=(tf.constant(3), tf.constant([4.0],
                                                               tf.float64)))
  leaves = _structure.flatten(value, VALUE_TYPE)
  assert [l.numpy().tolist() for l in leaves] == [[1.0, 2.0], 3, [4.0]]
  packed = _structure.pack(leaves, VALUE_TYPE)
  assert isinstance(packed, collections.OrderedDict)
  assert list(packed) == ['z', 'a'] and isinstance(packed['a'], tuple)
  assert packed['a'][0].numpy() == 3
  scalar = tff.TensorType(np.float32)
  assert _structure.pack([tf.constant(5.0)], scalar).numpy() == 5.0


def test_to_python_turns_structs_into_containers():
  struct = tff.structure.Struct([('z', 1), ('a', 2)])
  assert _structure.to_python(struct) == collections.OrderedDict(z=1, a=2)
  assert _structure.to_python(struct) is not struct
  plain = {'x': 1}
  assert _structure.to_python(plain) is plain


@pytest.mark.parametrize('values, finite', [
    (([1.0, 2.0], 3.0), True), (([1.0, np.nan], 3.0), False),
    (([1.0, 2.0], -np.inf), False)])
def test_all_finite(values, finite):
  structure = (tf.constant(values[0]), {'b': tf.constant(values[1])})
  assert bool(_structure.all_finite(structure)) is finite


def test_program_state_paths_and_packing_round_trip():
  weights = tff.learning.models.ModelWeights(
      trainable=[np.ones((2, 3), np.float32), np.zeros(3, np.float32)],
      non_trainable=[])
  structure = {'state': weights, 'round_num': 7,
               'extra': collections.OrderedDict(z=np.int64(1), a=(2.0,))}
  flat = _structure.flatten_with_paths(structure)
  # Dict keys sorted, attrs fields by name, empty containers have no leaves.
  assert [path for path, _ in flat] == [
      'extra/a/0', 'extra/z', 'round_num', 'state/trainable/0',
      'state/trainable/1']
  packed = _structure.pack_like(structure, [value for _, value in flat])
  assert isinstance(packed['state'], tff.learning.models.ModelWeights)
  assert packed['state'].non_trainable == []
  assert list(packed['extra']) == ['z', 'a']
  assert packed['extra']['a'] == (2.0,) and packed['round_num'] == 7
  np.testing.assert_array_equal(packed['state'].trainable[0],
                                np.ones((2, 3), np.float32))
