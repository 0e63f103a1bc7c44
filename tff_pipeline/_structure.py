"""Helpers for nested values and TFF types: the one place using TFF internals.

TFF hands a `tff.tensorflow.computation` its structured arguments as
`tff.structure.Struct`s, and describes them with `tff.StructType`s that carry
the Python container to rebuild. `tf.nest` understands neither, and
`tff.structure` is not part of TFF's stable API, so every module of the
pipeline goes through these helpers: an upgrade of TFF touches this file
alone.

Leaves come in TFF's order (a struct's element order), which for an
`OrderedDict` is its insertion order; `tf.nest` would sort dict keys instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_federated as tff
# The structures `tff.program`'s state managers accept, flattened as TFF's
# own `FileProgramStateManager` flattens them; not exported by `tff.program`.
from tensorflow_federated.python.program import structure_utils


def to_python(value: object) -> object:
  """TFF structs to nested OrderedDicts/tuples, which `tf.nest` understands.

  Any other value (a tensor, or an already Python container) is returned as
  it is.
  """
  if isinstance(value, tff.structure.Struct):
    return tff.structure.to_odict_or_tuple(value)
  return value


def element_names(type_spec: tff.StructType) -> list[str | None]:
  """The names of a struct type's elements, in order (None: unnamed)."""
  return [name for name, _ in tff.structure.iter_elements(type_spec)]


def leaf_types(type_spec: tff.Type) -> list[tff.TensorType]:
  """The tensor types of `type_spec` (a tensor or struct type), TFF order."""
  if isinstance(type_spec, tff.StructType):
    return list(tff.structure.flatten(type_spec))
  return [type_spec]


def flatten(value: object, type_spec: tff.Type) -> list[tf.Tensor]:
  """The tensors of `value` (a Struct or Python containers), in TFF order.

  Args:
    value: A value of type `type_spec`.
    type_spec: Its TFF type: a tensor type or a struct of them.
  """
  if not isinstance(type_spec, tff.StructType):
    return [value]
  return tff.structure.flatten(
      tff.structure.from_container(value, recursive=True))


def pack(leaves: Sequence[tf.Tensor], type_spec: tff.Type) -> object:
  """`leaves` (in TFF order) in the structure and containers of `type_spec`."""
  if not isinstance(type_spec, tff.StructType):
    return leaves[0]
  return tff.types.type_to_py_container(
      tff.structure.pack_sequence_as(type_spec, list(leaves)), type_spec)


def all_finite(structure: object) -> tf.Tensor:
  """A boolean scalar tensor: every floating-point value is finite.

  Integer tensors cannot hold NaN or inf and are skipped; an empty structure
  is finite.

  Args:
    structure: A tensor, or a nest of tensors `tf.nest` can flatten (pass
      Structs through `to_python` first).
  """
  checks = [tf.reduce_all(tf.math.is_finite(t))
            for t in tf.nest.flatten(structure) if t.dtype.is_floating]
  return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def flatten_with_paths(structure: object) -> list[tuple[str, object]]:
  """The leaves of a program state structure, each with its path.

  The structure is a `tff.program` one: dicts (keys sorted), lists, tuples,
  namedtuples and attrs classes (TFF's `LearningAlgorithmState` and
  `ModelWeights`) nest; anything else is a leaf. Paths join the keys, field
  names and indices with '/', e.g.
  'process_state/global_model_weights/trainable/0'.
  """
  return structure_utils.flatten_with_name(structure)


def pack_like(structure: object, leaves: Sequence[object]) -> object:
  """`leaves` (in `flatten_with_paths` order) in the containers of
  `structure`, a nest of the same shape."""
  return structure_utils.unflatten_as(structure, list(leaves))
