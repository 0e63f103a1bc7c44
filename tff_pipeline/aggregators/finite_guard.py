"""Finite guards: no NaN or +-inf client update passes clipping, zeroing or DP.

TFF's robust wrappers decide by comparing a client's norm with a threshold,
and a comparison with NaN is false:

  * `tff.aggregators.zeroing_factory` zeroes when `norm > threshold`, so an
    update with a NaN (its norm is NaN) passes unchanged;
  * `tff.aggregators.clipping_factory` scales by `clip / norm` only when
    `norm > clip`: a NaN update passes unchanged, and an infinite one becomes
    NaN (inf / inf);
  * `tff.aggregators.DifferentiallyPrivateFactory` clips with
    `tf.clip_by_global_norm`, which sets every value to NaN when the norm is
    not finite.

One such client makes the round's aggregate non-finite. Their adaptive norm
estimates (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping", arXiv 1905.03871; zeroing's 98th percentile and DP's adaptive
clip) count a client as below the estimate if `norm <= estimate`, so a NaN or
infinite norm counts as above it: with 20% such clients and TFF's zeroing
settings (target 0.98, learning rate ln 10) the estimate grows by
exp(ln 10 * 0.18) = 1.51 times a round, without bound.

The guards here wrap those factories and look at every client's update
before they do. An update with a NaN or +-inf in any tensor, or a non-finite
weight, is replaced by zeros before the wrapped factory sees it:

  * zeroing (`zeroing_factory`) zeroes it and keeps the client's weight, as
    TFF's zeroing does for a too-large update;
  * clipping (`clipping_factory`) drops it: zero update and zero weight;
  * DP (`dp_factory`, unweighted) contributes zeros, i.e. the client is
    dropped from the noised sum, whose denominator is fixed.

The wrapped factory's norm estimate then sees a zero norm (below any
estimate), so the estimate stays finite and among the finite clients' norms:
with a fraction f of non-finite clients it tracks their (q - f) / (1 - f)
quantile instead of the q-th (0.975 instead of 0.98 for zeroing with
f = 0.2; for DP's adaptive clip at q = 0.5, 0.375).

A weighted round in which no client is left with a positive weight (e.g.
every update non-finite under clipping) returns a zero update: the inner
mean would divide zero by zero. Unweighted (DP) rounds never divide by a
client count, so an all-bad round is the inner factory's result for all-zero
contributions (for DP, the noise alone).

Measurements: the wrapped process's, plus

  nonfinite_count   int32, clients whose update (or weight) was not finite;

and, when the guard is told which of the wrapped process's counts it stands
in for (`count_into`: `zeroed_count`, `clipped_count`), that count includes
them too, so the CSV's `.../zeroed_count` and `.../clipped_count` count every
update those options neutralised. The counts are summed with the wrapped
factory's count sum (secure with `--secure_aggregation`). With DP they are
released without noise, as TFF's own `tff.learning.dp_aggregator` releases
its zeroed count.

The robust aggregators (`robust.py`) and the compensated aggregator
(`compensation.py`) apply the same rule of their own (a non-finite update or
weight excludes the client; see their docstrings); `_structure.all_finite`
is the check.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import _structure

COUNT_DTYPE = np.int32
"""dtype of `nonfinite_count`, as TFF's `zeroed_count` and `clipped_count`."""

NONFINITE_COUNT = 'nonfinite_count'

Factory = (tff.aggregators.WeightedAggregationFactory
           | tff.aggregators.UnweightedAggregationFactory)


# ----------------------------------------------------------------------------
# Local math (TensorFlow) and its NumPy reference.
# ----------------------------------------------------------------------------


def _guard_tensors(leaves: list[tf.Tensor], weight: tf.Tensor | None,
                   drop_weight: bool):
  """(leaves, weight, nonfinite, weighted) of one client after the guard."""
  weight_ok = (tf.math.is_finite(weight)
               if weight is not None and weight.dtype.is_floating
               else tf.constant(True))
  ok = _structure.all_finite(leaves) & weight_ok
  leaves = [tf.where(ok, t, tf.zeros_like(t)) for t in leaves]
  nonfinite = tf.cast(tf.logical_not(ok), COUNT_DTYPE)
  if weight is None:
    return leaves, None, nonfinite, None
  keep_weight = ok if drop_weight else weight_ok
  weight = tf.where(keep_weight, weight, tf.zeros_like(weight))
  return leaves, weight, nonfinite, tf.cast(weight > 0, COUNT_DTYPE)


def guard_reference(
    updates: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float] | None,
    *,
    drop_weight: bool,
) -> tuple[list[list[np.ndarray]], np.ndarray | None, int]:
  """NumPy reference of what the guard hands the wrapped factory.

  Args:
    updates: per client, the list of its update's tensors.
    weights: per client, its weight; None for an unweighted guard.
    drop_weight: whether a non-finite client's weight becomes 0 (clipping)
      or is kept (zeroing; a non-finite weight still becomes 0).

  Returns:
    (updates, weights, nonfinite_count) after the guard.
  """
  out_updates, out_weights, count = [], [], 0
  for k, update in enumerate(updates):
    ok = all(np.all(np.isfinite(t)) for t in update)
    weight = None if weights is None else weights[k]
    if weight is not None:
      ok = ok and bool(np.isfinite(weight))
    count += not ok
    out_updates.append([np.asarray(t) if ok else np.zeros_like(t)
                        for t in update])
    if weight is not None:
      out_weights.append(weight if ok or (not drop_weight
                                          and np.isfinite(weight)) else 0.0)
  return (out_updates, None if weights is None else np.asarray(out_weights),
          count)


@tff.tensorflow.computation
def _add_count(count, extra):
  return count + tf.cast(extra, count.dtype)


# ----------------------------------------------------------------------------
# Factories.
# ----------------------------------------------------------------------------


class _GuardBuilder:
  """Builds the guarded process around `inner`; shared by both factories."""

  def __init__(self, inner: Factory, count_into: str | None,
               count_sum_factory: tff.aggregators.UnweightedAggregationFactory
               | None):
    if count_sum_factory is None:
      count_sum_factory = tff.aggregators.SumFactory()
    if not isinstance(count_sum_factory,
                      tff.aggregators.UnweightedAggregationFactory):
      raise TypeError('count_sum_factory must be an unweighted factory, got '
                      f'{count_sum_factory}')
    self.inner = inner
    self.count_into = count_into
    self.count_sum_factory = count_sum_factory

  def build(self, value_type, weight_type, drop_weight: bool
            ) -> tff.templates.AggregationProcess:
    value_type = tff.types.to_type(value_type)
    weighted = weight_type is not None
    if weighted:
      weight_type = tff.types.to_type(weight_type)
      inner_process = self.inner.create(value_type, weight_type)
    else:
      inner_process = self.inner.create(value_type)
    inner_output = inner_process.next.type_signature.result
    count_names = (NONFINITE_COUNT, 'weighted') if weighted else (
        NONFINITE_COUNT,)
    count_type = tff.types.to_type(collections.OrderedDict(
        (name, COUNT_DTYPE) for name in count_names))
    count_process = self.count_sum_factory.create(count_type)
    measurement_names = self._merge_names(inner_output.measurements.member)

    if weighted:
      @tff.tensorflow.computation(value_type, weight_type)
      def guard(value, weight):
        leaves, weight, nonfinite, positive = _guard_tensors(
            _structure.flatten(value, value_type), weight, drop_weight)
        return _structure.pack(leaves, value_type), weight, collections.OrderedDict(
            nonfinite_count=nonfinite, weighted=positive)
    else:
      @tff.tensorflow.computation(value_type)
      def guard(value):
        leaves, _, nonfinite, _ = _guard_tensors(
            _structure.flatten(value, value_type), None, drop_weight)
        return _structure.pack(leaves, value_type), collections.OrderedDict(
            nonfinite_count=nonfinite)

    result_type = inner_output.result.member
    if weighted:
      @tff.tensorflow.computation(result_type, count_type)
      def zero_if_unweighted(result, counts):
        # The inner mean divided 0 by 0 if no client kept a positive weight.
        nonzero = counts['weighted'] > 0
        return _structure.pack([tf.where(nonzero, t, tf.zeros_like(t))
                      for t in _structure.flatten(result, result_type)], result_type)

    @tff.federated_computation
    def init_fn():
      return tff.federated_zip(collections.OrderedDict(
          inner=inner_process.initialize(),
          count_sum=count_process.initialize()))

    def next_impl(state, value, weight=None):
      if weighted:
        value, weight, counts = tff.federated_map(guard, (value, weight))
        output = inner_process.next(state['inner'], value, weight)
      else:
        value, counts = tff.federated_map(guard, value)
        output = inner_process.next(state['inner'], value)
      count_output = count_process.next(state['count_sum'], counts)
      totals = count_output.result
      result = output.result
      if weighted:
        result = tff.federated_map(zero_if_unweighted, (result, totals))
      measurements = self._merge(output.measurements, measurement_names,
                                 totals[NONFINITE_COUNT])
      new_state = tff.federated_zip(collections.OrderedDict(
          inner=output.state, count_sum=count_output.state))
      return tff.templates.MeasuredProcessOutput(new_state, result,
                                                 measurements)

    state_type = init_fn.type_signature.result
    if weighted:
      @tff.federated_computation(
          state_type, tff.FederatedType(value_type, tff.CLIENTS),
          tff.FederatedType(weight_type, tff.CLIENTS))
      def next_fn(state, value, weight):
        return next_impl(state, value, weight)
    else:
      @tff.federated_computation(
          state_type, tff.FederatedType(value_type, tff.CLIENTS))
      def next_fn(state, value):
        return next_impl(state, value)

    return tff.templates.AggregationProcess(init_fn, next_fn)

  def _merge_names(self, measurement_type) -> list[str] | None:
    """The inner measurements' names, or None to nest them under `inner`."""
    if not isinstance(measurement_type, tff.StructType):
      names = None
    else:
      names = _structure.element_names(measurement_type)
      if not names or None in names or NONFINITE_COUNT in names:
        names = None
    if self.count_into is not None and self.count_into not in (names or []):
      raise ValueError(
          f'count_into={self.count_into!r} is not a measurement of the '
          f'wrapped process: {measurement_type}')
    return names

  def _merge(self, measurements, names, nonfinite):
    """The inner measurements with `nonfinite_count` (and `count_into`)."""
    if names is None:
      merged = collections.OrderedDict(inner=measurements)
    else:
      merged = collections.OrderedDict(
          (name, measurements[name]) for name in names)
      if self.count_into is not None:
        merged[self.count_into] = tff.federated_map(
            _add_count, (merged[self.count_into], nonfinite))
    merged[NONFINITE_COUNT] = nonfinite
    return tff.federated_zip(merged)


class FiniteGuardFactory(tff.aggregators.WeightedAggregationFactory):
  """Replaces non-finite client updates by zeros before a weighted `inner`.

  See the module docstring for the rule, the all-bad round and the
  measurements.

  Args:
    inner: the weighted factory to protect (TFF's zeroing or clipping).
    drop_weight: give a non-finite client weight 0 (clipping), or keep its
      weight and zero its update (zeroing). A non-finite weight is always 0.
    count_into: name of an int32 count among the inner measurements (e.g.
      `zeroed_count`) that should include the non-finite clients.
    count_sum_factory: unweighted factory that sums the int32 counts;
      `tff.aggregators.SumFactory()` by default.
  """

  def __init__(self, inner: tff.aggregators.WeightedAggregationFactory, *,
               drop_weight: bool, count_into: str | None = None,
               count_sum_factory: (tff.aggregators.UnweightedAggregationFactory
                                   | None) = None):
    if not isinstance(inner, tff.aggregators.WeightedAggregationFactory):
      raise TypeError(f'inner must be a weighted factory, got {inner}')
    self._builder = _GuardBuilder(inner, count_into, count_sum_factory)
    self._drop_weight = bool(drop_weight)

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    return self._builder.build(value_type, weight_type, self._drop_weight)


class UnweightedFiniteGuardFactory(
    tff.aggregators.UnweightedAggregationFactory):
  """Replaces non-finite client updates by zeros before an unweighted `inner`.

  For DP and the other unweighted sums: a zero contribution drops the client
  from the sum. Same arguments as `FiniteGuardFactory`, without weights.
  """

  def __init__(self, inner: tff.aggregators.UnweightedAggregationFactory, *,
               count_into: str | None = None,
               count_sum_factory: (tff.aggregators.UnweightedAggregationFactory
                                   | None) = None):
    if not isinstance(inner, tff.aggregators.UnweightedAggregationFactory):
      raise TypeError(f'inner must be an unweighted factory, got {inner}')
    self._builder = _GuardBuilder(inner, count_into, count_sum_factory)

  def create(self, value_type) -> tff.templates.AggregationProcess:
    return self._builder.build(value_type, None, drop_weight=True)


def guard(inner: Factory, *, drop_weight: bool,
          count_into: str | None = None,
          count_sum_factory: (tff.aggregators.UnweightedAggregationFactory
                              | None) = None) -> Factory:
  """The guard matching `inner`: weighted or unweighted."""
  if isinstance(inner, tff.aggregators.WeightedAggregationFactory):
    return FiniteGuardFactory(inner, drop_weight=drop_weight,
                              count_into=count_into,
                              count_sum_factory=count_sum_factory)
  return UnweightedFiniteGuardFactory(inner, count_into=count_into,
                                      count_sum_factory=count_sum_factory)


def zeroing_factory(
    zeroing_norm: float | tff.templates.EstimationProcess, inner: Factory, *,
    zeroed_count_sum_factory: (tff.aggregators.UnweightedAggregationFactory
                               | None) = None) -> Factory:
  """`tff.aggregators.zeroing_factory` that also zeroes non-finite updates."""
  return guard(
      tff.aggregators.zeroing_factory(
          zeroing_norm, inner,
          zeroed_count_sum_factory=zeroed_count_sum_factory),
      drop_weight=False, count_into='zeroed_count',
      count_sum_factory=zeroed_count_sum_factory)


def clipping_factory(
    clipping_norm: float | tff.templates.EstimationProcess, inner: Factory, *,
    clipped_count_sum_factory: (tff.aggregators.UnweightedAggregationFactory
                                | None) = None) -> Factory:
  """`tff.aggregators.clipping_factory` that also drops non-finite updates."""
  return guard(
      tff.aggregators.clipping_factory(
          clipping_norm, inner,
          clipped_count_sum_factory=clipped_count_sum_factory),
      drop_weight=True, count_into='clipped_count',
      count_sum_factory=clipped_count_sum_factory)


def dp_factory(inner: tff.aggregators.UnweightedAggregationFactory
               ) -> tff.aggregators.UnweightedAggregationFactory:
  """A DP factory (`tff.aggregators.DifferentiallyPrivateFactory`) whose
  clipping never sees a non-finite update: such a client contributes zeros."""
  return UnweightedFiniteGuardFactory(inner)
