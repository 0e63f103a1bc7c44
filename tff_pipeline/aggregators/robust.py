"""Coordinate-wise robust aggregators: median and trimmed mean.

Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (arXiv 1803.01498), define two statistics of the
m client updates u_1, ..., u_m, taken independently for every coordinate j:

  * coordinate-wise median: med_j = median{u_1j, ..., u_mj};
  * coordinate-wise trimmed mean with fraction beta in [0, 1/2): sort
    u_1j, ..., u_mj, remove the floor(beta * m) smallest and the
    floor(beta * m) largest, and average the m - 2 floor(beta * m) left.

Both are unweighted: a client's weight (for FedAvg, its number of examples)
only says whether it takes part. A client whose weight is not positive
(including a NaN weight), or whose update contains a NaN or an infinity in
any tensor, is excluded from every coordinate before the statistic is taken;
m counts the remaining clients. If no client remains the result is zero
(a zero model delta). With an even m the median is the mean of the two middle
values, as `np.median`.

`coordinate_median` and `trimmed_mean` are the NumPy definitions;
`MedianFactory` and `TrimmedMeanFactory` compute the same numbers as
`tff.aggregators.WeightedAggregationFactory`s, so they can be passed as
`model_aggregator` to `tff.learning.algorithms.build_weighted_fed_avg`. Their
processes have empty state and report `num_clients` (clients received) and
`num_excluded` (clients excluded for a non-positive weight or a non-finite
update) as int32 measurements at SERVER. Both compute in float64 and round to
the value's dtype once, so they agree with the references to float32
rounding.

Cost. A mean is a sum: the server keeps O(d) numbers for d parameters and
spends O(m * d) time for m clients, and the sum can go through secure
aggregation or have differential-privacy noise added. A coordinate-wise
statistic needs every individual update: the clients' values are gathered at
the server with `tff.federated_aggregate` (accumulator tensors with an unknown
leading dimension, concatenated), so the server holds O(m * d) numbers, and
sorting every coordinate takes O(m * d * log m) time. TFF's local executor
accumulates one client at a time, and each concatenation copies the partial
stack, so gathering also copies O(m^2 * d) numbers: these aggregators are
meant for tens of clients per round, not thousands. Because they need the
individual updates, they cannot be combined with secure aggregation (which
reveals only the sum) or with differential-privacy noise addition (calibrated
to a sum of clipped updates): do not nest them with
`tff.aggregators.SecureSumFactory` or
`tff.aggregators.DifferentiallyPrivateFactory`.

Flower ships the same two strategies (`FedMedian`, `FedTrimmedAvg`); TFF has
none.
"""

from __future__ import annotations

import abc
import collections
import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import _structure

COUNT_DTYPE = np.int32
"""dtype of the `num_clients` and `num_excluded` measurements."""

_COMPUTE_DTYPE = tf.float64


# ----------------------------------------------------------------------------
# NumPy references.
# ----------------------------------------------------------------------------


def _check_trim_fraction(trim_fraction: float) -> float:
  if (isinstance(trim_fraction, bool)
      or not isinstance(trim_fraction, numbers.Real)
      or not 0.0 <= float(trim_fraction) < 0.5):
    raise ValueError(
        f'trim_fraction must be a number in [0, 0.5), got {trim_fraction!r}: '
        'it is the fraction of clients removed at each end of every '
        'coordinate, so at least one value must be left')
  return float(trim_fraction)


def _kept_updates(
    updates: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.dtype]:
  """The rows of `updates` to aggregate, in float64, and the output dtype."""
  updates = np.asarray(updates)
  weights = np.asarray(weights)
  if updates.ndim < 1:
    raise ValueError(
        f'updates must have shape [num_clients, ...], got {updates.shape}')
  if weights.shape != updates.shape[:1]:
    raise ValueError(
        f'weights must have shape [num_clients] = {updates.shape[:1]}, '
        f'got {weights.shape}')
  finite = np.isfinite(updates).all(axis=tuple(range(1, updates.ndim)))
  with np.errstate(invalid='ignore'):
    keep = finite & (weights > 0)
  out_dtype = (updates.dtype if np.issubdtype(updates.dtype, np.floating)
               else np.dtype(np.float64))
  return updates[keep].astype(np.float64), out_dtype


def coordinate_median(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Coordinate-wise median of the admissible clients' updates.

  Yin et al. 2018 (arXiv 1803.01498). Clients with weight <= 0 (or NaN) or
  any non-finite value are excluded first; the median is then unweighted, the
  mean of the two middle values for an even count.

  Args:
    updates: shape [num_clients, ...], one update per client.
    weights: shape [num_clients]; only their sign matters.

  Returns:
    Shape `updates.shape[1:]`, in the updates' float dtype (float64 for
    integer updates); all zeros if no client is admissible.
  """
  kept, out_dtype = _kept_updates(updates, weights)
  if kept.shape[0] == 0:
    return np.zeros(kept.shape[1:], out_dtype)
  return np.median(kept, axis=0).astype(out_dtype)


def trimmed_mean(updates: np.ndarray, weights: np.ndarray,
                 trim_fraction: float) -> np.ndarray:
  """Coordinate-wise trimmed mean of the admissible clients' updates.

  Yin et al. 2018 (arXiv 1803.01498). Clients with weight <= 0 (or NaN) or
  any non-finite value are excluded first; with m clients left, the
  floor(trim_fraction * m) smallest and largest values of every coordinate
  are removed and the rest averaged, unweighted.

  Args:
    updates: shape [num_clients, ...], one update per client.
    weights: shape [num_clients]; only their sign matters.
    trim_fraction: in [0, 0.5); 0 gives the plain (unweighted) mean.

  Returns:
    Shape `updates.shape[1:]`, in the updates' float dtype (float64 for
    integer updates); all zeros if no client is admissible.

  Raises:
    ValueError: if `trim_fraction` is outside [0, 0.5).
  """
  trim_fraction = _check_trim_fraction(trim_fraction)
  kept, out_dtype = _kept_updates(updates, weights)
  m = kept.shape[0]
  if m == 0:
    return np.zeros(kept.shape[1:], out_dtype)
  k = math.floor(trim_fraction * m)
  return np.sort(kept, axis=0)[k:m - k].mean(axis=0).astype(out_dtype)


# ----------------------------------------------------------------------------
# TFF aggregation factories.
# ----------------------------------------------------------------------------


def _check_types(value_type: tff.Type, weight_type: tff.Type) -> None:
  """Raises TypeError unless the factories can aggregate these types."""
  if isinstance(value_type, tff.FederatedType):
    raise TypeError(f'value_type must not be federated, got {value_type}')
  if not tff.types.is_structure_of_floats(value_type):
    raise TypeError('value_type must be a float tensor or a structure of '
                    f'float tensors, got {value_type}')
  for leaf in _structure.leaf_types(value_type):
    if not tff.types.is_shape_fully_defined(leaf.shape):
      raise TypeError(
          f'every tensor of value_type needs a fully defined shape, got {leaf}')
  if (not isinstance(weight_type, tff.TensorType) or weight_type.shape != ()
      or not (np.issubdtype(weight_type.dtype, np.floating)
              or np.issubdtype(weight_type.dtype, np.integer))):
    raise TypeError(
        f'weight_type must be a numeric scalar, got {weight_type}')


def _trimmed_mean_tf(stacked: tf.Tensor, num_trimmed: tf.Tensor) -> tf.Tensor:
  """Mean over axis 0 of `stacked` without `num_trimmed` rows at each end.

  Args:
    stacked: shape [m, ...], m >= 0, all finite.
    num_trimmed: int32 scalar k, 0 <= 2k < max(m, 1).

  Returns:
    Shape `stacked.shape[1:]` in `stacked`'s dtype, computed in float64;
    zeros if m = 0.
  """
  values = tf.cast(stacked, _COMPUTE_DTYPE)
  m = tf.shape(values)[0]
  ordered = tf.sort(values, axis=0)
  middle = ordered[num_trimmed:m - num_trimmed]
  count = tf.maximum(m - 2 * num_trimmed, 1)
  mean = tf.reduce_sum(middle, axis=0) / tf.cast(count, _COMPUTE_DTYPE)
  return tf.cast(mean, stacked.dtype)


class _GatherComputations(NamedTuple):
  """The four arguments of `tff.federated_aggregate` after the value."""

  zero: tff.Computation
  accumulate: tff.Computation
  merge: tff.Computation
  report: tff.Computation


def _build_gather_computations(
    value_type: tff.Type, weight_type: tff.Type,
    num_trimmed: Callable[[tf.Tensor], tf.Tensor]) -> _GatherComputations:
  """Computations that stack the admissible updates and trim them.

  The accumulator holds, for every tensor of `value_type`, the admissible
  clients' values stacked along a new leading dimension of unknown size, and
  the int32 counts `num_clients` and `num_excluded`. `accumulate` appends one
  (value, weight) pair if its weight is positive and all its values are
  finite; `merge` concatenates two accumulators; `report` returns
  `OrderedDict(result=<statistic in value_type's structure>,
  measurements=OrderedDict(num_clients=.., num_excluded=..))`.

  Args:
    value_type: checked by `_check_types`.
    weight_type: checked by `_check_types`.
    num_trimmed: maps the int32 number m of admissible clients to the int32
      number k of values removed at each end, 0 <= 2k < max(m, 1).

  Returns:
    The `zero`, `accumulate`, `merge` and `report` computations.
  """
  leaf_types = _structure.leaf_types(value_type)
  stack_type = tuple(
      tff.TensorType(t.dtype, (None,) + tuple(t.shape)) for t in leaf_types)
  accumulator_type = tff.types.to_type(collections.OrderedDict(
      values=stack_type,
      num_clients=tff.TensorType(COUNT_DTYPE),
      num_excluded=tff.TensorType(COUNT_DTYPE),
  ))
  client_type = tff.types.to_type((value_type, weight_type))

  @tff.tensorflow.computation
  def zero():
    return collections.OrderedDict(
        values=tuple(tf.zeros((0,) + tuple(t.shape), t.dtype)
                     for t in leaf_types),
        num_clients=tf.constant(0, COUNT_DTYPE),
        num_excluded=tf.constant(0, COUNT_DTYPE),
    )

  @tff.tensorflow.computation(accumulator_type, client_type)
  def accumulate(accumulator, client):
    value, weight = client
    leaves = _structure.flatten(value, value_type)
    keep = tf.logical_and(_structure.all_finite(leaves), weight > 0)
    mask = tf.reshape(keep, [1])
    values = tuple(
        tf.concat([stack, tf.boolean_mask(leaf[tf.newaxis], mask)], axis=0)
        for stack, leaf in zip(accumulator['values'], leaves))
    return collections.OrderedDict(
        values=values,
        num_clients=accumulator['num_clients'] + 1,
        num_excluded=(accumulator['num_excluded']
                      + 1 - tf.cast(keep, COUNT_DTYPE)),
    )

  @tff.tensorflow.computation(accumulator_type, accumulator_type)
  def merge(a, b):
    return collections.OrderedDict(
        values=tuple(tf.concat([x, y], axis=0)
                     for x, y in zip(a['values'], b['values'])),
        num_clients=a['num_clients'] + b['num_clients'],
        num_excluded=a['num_excluded'] + b['num_excluded'],
    )

  @tff.tensorflow.computation(accumulator_type)
  def report(accumulator):
    stacks = accumulator['values']
    k = num_trimmed(tf.shape(stacks[0])[0])
    return collections.OrderedDict(
        result=_structure.pack([_trimmed_mean_tf(s, k) for s in stacks],
                               value_type),
        measurements=collections.OrderedDict(
            num_clients=accumulator['num_clients'],
            num_excluded=accumulator['num_excluded'],
        ),
    )

  return _GatherComputations(zero, accumulate, merge, report)


class _CoordinateWiseFactory(tff.aggregators.WeightedAggregationFactory):
  """Gathers the admissible updates at SERVER and trims every coordinate."""

  @abc.abstractmethod
  def _num_trimmed(self, m: tf.Tensor) -> tf.Tensor:
    """int32 number of values removed at each end, for m (int32) clients."""

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    """An `AggregationProcess` with empty state; see the module docstring.

    Args:
      value_type: a float tensor type or a structure of them, each of fully
        defined shape (e.g. a Keras model's trainable weights).
      weight_type: a numeric scalar type (e.g. float32 example counts).

    Returns:
      A process whose `next(state, value@CLIENTS, weight@CLIENTS)` returns
      the statistic at SERVER with the structure of `value_type`, and the
      measurements `num_clients` and `num_excluded` (int32) at SERVER.

    Raises:
      TypeError: if the types are not as above.
    """
    _check_types(value_type, weight_type)
    gather = _build_gather_computations(
        value_type, weight_type, self._num_trimmed)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS),
    )
    def next_fn(state, value, weight):
      aggregate = tff.federated_aggregate(
          tff.federated_zip((value, weight)), gather.zero(),
          gather.accumulate, gather.merge, gather.report)
      return tff.templates.MeasuredProcessOutput(
          state=state,
          result=aggregate.result,
          measurements=aggregate.measurements,
      )

    return tff.templates.AggregationProcess(init_fn, next_fn)


class MedianFactory(_CoordinateWiseFactory):
  """Coordinate-wise median of the client updates (Yin et al. 2018).

  Unweighted over the clients with a positive weight and a finite update;
  see the module docstring for the exclusion rule, the measurements and the
  cost. Matches `coordinate_median`.
  """

  def _num_trimmed(self, m: tf.Tensor) -> tf.Tensor:
    # Keep the 1 (m odd) or 2 (m even) middle values; 0 for m = 0.
    return tf.maximum(m - 1, 0) // 2

  def __repr__(self) -> str:
    return 'MedianFactory()'


class TrimmedMeanFactory(_CoordinateWiseFactory):
  """Coordinate-wise trimmed mean of the client updates (Yin et al. 2018).

  Removes the floor(trim_fraction * m) smallest and largest values of every
  coordinate among the m clients with a positive weight and a finite update,
  and averages the rest, unweighted. Matches `trimmed_mean`.
  """

  def __init__(self, trim_fraction: float):
    """Initializes the factory.

    Args:
      trim_fraction: in [0, 0.5), the fraction beta of Yin et al. 2018
        removed at each end; 0 is the unweighted mean.

    Raises:
      ValueError: if `trim_fraction` is not a number in [0, 0.5).
    """
    self._trim_fraction = _check_trim_fraction(trim_fraction)

  @property
  def trim_fraction(self) -> float:
    return self._trim_fraction

  def _num_trimmed(self, m: tf.Tensor) -> tf.Tensor:
    # floor(beta * m) in float64, the same arithmetic as `trimmed_mean`.
    product = (tf.constant(self._trim_fraction, tf.float64)
               * tf.cast(m, tf.float64))
    return tf.cast(tf.floor(product), tf.int32)

  def __repr__(self) -> str:
    return f'TrimmedMeanFactory(trim_fraction={self._trim_fraction!r})'
