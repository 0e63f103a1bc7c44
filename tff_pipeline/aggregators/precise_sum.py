"""A sum that does not depend on the order of its terms (to float32 output).

TFF's `SumFactory` adds float32 client values in float32. Floating-point
addition is not associative, so the same clients summed in another grouping
(e.g. split across several remote workers and merged) give a sum that
differs in the last bits, and a few rounds of SGD amplify such differences.
`Float64SumFactory` adds in float64 and rounds to the value's dtype once at
the end: the rounding error of the float64 sum is ~1e-16 relative, far below
float32's resolution, so the result is the same whatever the grouping (except
in the rare case where the exact sum falls on a float32 rounding boundary).
It is the value sum of our weighted mean, so that a run split across
`--workers` gives the model of the same run on one machine.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import _structure


class Float64SumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Sums float tensors in float64; returns them in their own dtypes.

  The process has empty state and no measurements.
  """

  def create(self, value_type) -> tff.templates.AggregationProcess:
    value_type = tff.types.to_type(value_type)

    @tff.tensorflow.computation(value_type)
    def widen(value):
      return tf.nest.map_structure(lambda t: tf.cast(t, tf.float64),
                                   _structure.to_python(value))

    wide_type = widen.type_signature.result

    @tff.tensorflow.computation(wide_type)
    def narrow(total):
      leaves = _structure.flatten(total, wide_type)
      dtypes = [t.dtype for t in _structure.leaf_types(value_type)]
      return _structure.pack(
          [tf.cast(t, d) for t, d in zip(leaves, dtypes)], value_type)

    @tff.federated_computation
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      total = tff.federated_sum(tff.federated_map(widen, value))
      return tff.templates.MeasuredProcessOutput(
          state, tff.federated_map(narrow, total),
          tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(init_fn, next_fn)

