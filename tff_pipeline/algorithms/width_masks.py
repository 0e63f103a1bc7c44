"""The coordinate masks of a HeteroFL sub-model, built inside TF.

HeteroFL (Diao, Ding and Tarokh 2021, "HeteroFL: Computation and
Communication Efficient Federated Learning for Heterogeneous Clients", ICLR
2021, arXiv 2010.01264) trains on a client of width w the sub-model made of
the first ceil(w * units) units of every hidden layer. One TFF computation
serves every width: the client receives its `width.unit_table` (kept units
per weight, with `width.kept_units`' exact rounding) as data, and
`coordinate_masks` turns it into 0/1 masks of the global weights' shapes,
equal to the NumPy `width.masks(spec, w)`.

A mask is the outer product of two 0/1 vectors: on the weight's "out" axis
(its layer's units), index < k_out; on a kernel's "in" axis, index modulo
the previous layer's units < k_in, which keeps k_in of every `in_units`
rows of a dense kernel after `Flatten` (features numbered unit fastest).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tff_pipeline.models import width as width_lib


def table_spec(spec: width_lib.WidthSpec) -> tf.TensorSpec:
  """The `tf.TensorSpec` of `width.unit_table(spec, w)`: int32 [weights, 2]."""
  return tf.TensorSpec((len(spec.weights), 2), tf.int32)


def coordinate_masks(spec: width_lib.WidthSpec, table: tf.Tensor,
                     dtypes: Sequence[tf.DType]) -> list[tf.Tensor]:
  """Per global weight, 1 where the sub-model of `table` holds it, else 0.

  Args:
    spec: The global model's `WidthSpec`.
    table: An int32 tensor [len(spec.weights), 2], `width.unit_table(spec,
      w)`.
    dtypes: The weights' dtypes, in model order.

  Returns:
    Tensors of the shapes `spec.shapes` and the dtypes `dtypes`.
  """
  masks = []
  for i, (cut, dtype) in enumerate(zip(spec.weights, dtypes)):
    held = tf.range(cut.shape[cut.out_axis]) < table[i, 0]
    if cut.in_axis is not None:
      modulus = cut.in_units if cut.cut_in else cut.shape[cut.in_axis]
      in_held = (tf.math.floormod(tf.range(cut.shape[cut.in_axis]), modulus)
                 < table[i, 1])
      held = tf.logical_and(in_held[:, tf.newaxis], held[tf.newaxis, :])
    masks.append(tf.broadcast_to(tf.cast(held, dtype), cut.shape))
  return masks
