"""The masked mean: each coordinate averaged over the clients that hold it.

HeteroFL (Diao, Ding and Tarokh 2021, "HeteroFL: Computation and
Communication Efficient Federated Learning for Heterogeneous Clients", ICLR
2021, arXiv 2010.01264, sec. 3) trains width-scaled sub-models of one
global model: client k holds only the coordinates of its width
(`models/width.py`). The server averages every coordinate over the clients
whose sub-model holds it, and leaves a coordinate nobody held unchanged:

    update_j = sum_k mask_kj n_k delta_kj / sum_k mask_kj n_k,
    update_j = 0 where sum_k mask_kj n_k = 0,

with mask_kj = 1 where client k holds coordinate j, else 0, and n_k the
client's update weight. (The paper averages the holders uniformly, n_k = 1;
weighting by n_k makes all-ones masks exactly FedAvg's weighted mean.)

Client value: the client's report (`tff_pipeline.client_reports`) with at
least

    <model_delta=T, coordinate_mask=T, ...>

where T is the model's trainable weights (float tensors) and
`coordinate_mask` has the same type: 1.0 where the client's sub-model holds
the coordinate, 0.0 elsewhere, as `width.scatter` returns it beside the
delta. A coordinate counts as held where its mask is positive; the delta
outside the held coordinates is ignored. Other fields of the report
(`local_steps`, `pre_training_loss`) are ignored too, so the factory takes
our client work's full report as it is. Sending the mask doubles the
simulated upload; a real client would send its sub-model's values and the
server, which assigned the width, would know the mask (see
docs/heterofl.md).

Weight: a numeric scalar n_k, the update weight that `weighting` declares.

Guards: a client whose weight is not positive or not finite, or whose delta
or mask has a NaN or +-inf, contributes nothing (as if it held no
coordinate). A coordinate whose total weight is 0 (nobody held it, or only
dropped clients did) gets 0, never NaN.

Composition: the two sums, sum_k mask_k n_k delta_k and sum_k mask_k n_k,
are inner `tff.aggregators.UnweightedAggregationFactory`s of the model
delta's type (`value_sum_factory`, `weight_sum_factory`), as in
`tff.aggregators.MeanFactory`; both default to the float64 sum of
`precise_sum.py`, as our `mean`. A secure or compressed sum can stand in for
them. Wrappers that look at the whole client value (TFF's clipping, zeroing,
DP) cannot wrap this factory: they would clip or noise the mask too.
docs/heterofl.md says which compositions hold and why.

Type signature of `next`:
  (<S@SERVER, <model_delta=T, coordinate_mask=T, ...>@CLIENTS,
    weight@CLIENTS> ->
   <state=S@SERVER, result=T@SERVER, measurements=M@SERVER>)

Measurements M:
  masked_mean/num_dropped    int32, clients dropped by the guards
  masked_mean/num_uncovered  int32, coordinates with total weight 0 (the
                             update leaves them unchanged)
  value_sum, weight_sum      the inner sums' measurements
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import _structure
from tff_pipeline import client_reports
from tff_pipeline.aggregators import precise_sum

COUNT_DTYPE = np.int32
"""dtype of the `num_dropped` and `num_uncovered` measurements."""


def masked_mean(
    deltas: np.ndarray, masks: np.ndarray, weights: np.ndarray,
) -> tuple[np.ndarray, dict[str, int]]:
  """NumPy reference of what one round of `MaskedMeanFactory` computes.

  Args:
    deltas: Client model deltas, shape [num_clients, ...].
    masks: Where each client holds a coordinate (positive) or not, the shape
      of `deltas`.
    weights: n_k, shape [num_clients].

  Returns:
    (the masked mean, of shape `deltas.shape[1:]` in float64, and the
    measurements `num_dropped` and `num_uncovered`).
  """
  deltas = np.asarray(deltas, np.float64)
  masks = np.asarray(masks, np.float64)
  weights = np.asarray(weights, np.float64)
  per_client = tuple(range(1, deltas.ndim))
  kept = (np.isfinite(deltas).all(axis=per_client)
          & np.isfinite(masks).all(axis=per_client)
          & np.isfinite(weights) & (np.nan_to_num(weights) > 0))
  n = np.where(kept, weights, 0.0).reshape((-1,) + (1,) * (deltas.ndim - 1))
  held = kept.reshape(n.shape) & (np.nan_to_num(masks) > 0)
  total_weight = (held * n).sum(axis=0)
  total_value = (held * n * np.where(held, deltas, 0.0)).sum(axis=0)
  covered = total_weight > 0
  mean = np.where(covered, total_value / np.where(covered, total_weight, 1.0),
                  0.0)
  return mean, {'num_dropped': int((~kept).sum()),
                'num_uncovered': int((~covered).sum())}


def _delta_type_of(value_type: tff.Type) -> tff.Type:
  """The model delta's type in a report with a coordinate mask.

  Raises:
    TypeError: unless `value_type` is a struct with `model_delta` (float
      tensors) and `coordinate_mask` of the same tensor types.
  """
  needed = (client_reports.MODEL_DELTA, client_reports.COORDINATE_MASK)
  if (not isinstance(value_type, tff.StructType)
      or not set(needed) <= set(_structure.element_names(value_type))):
    raise TypeError(
        f'the masked mean needs client reports with {needed[0]!r} and '
        f'{needed[1]!r} (client work that trains width-scaled sub-models); '
        f'got {value_type}')
  delta_type = value_type[client_reports.MODEL_DELTA]
  mask_type = value_type[client_reports.COORDINATE_MASK]
  if not tff.types.is_structure_of_floats(delta_type):
    raise TypeError(f'{needed[0]!r} must be float tensors, got {delta_type}')
  if _structure.leaf_types(mask_type) != _structure.leaf_types(delta_type):
    raise TypeError(f'{needed[1]!r} must have the tensor types of '
                    f'{needed[0]!r} {delta_type}, got {mask_type}')
  return delta_type


class MaskedMeanFactory(tff.aggregators.WeightedAggregationFactory):
  """Averages each coordinate over the clients that hold it (HeteroFL).

  See the module docstring for the value type, the guards and the
  measurements. Matches `masked_mean`.

  Args:
    value_sum_factory: Sums sum_k mask_k n_k delta_k; defaults to
      `precise_sum.Float64SumFactory()`.
    weight_sum_factory: Sums sum_k mask_k n_k (of the delta's type);
      defaults to `precise_sum.Float64SumFactory()`.
    weighting: The update weight n_k clients send, one of
      `client_reports.WEIGHTINGS`; by default the examples processed, as
      the `mean` aggregator, so that all-ones masks give its result.
  """

  def __init__(
      self,
      *,
      value_sum_factory: (tff.aggregators.UnweightedAggregationFactory
                          | None) = None,
      weight_sum_factory: (tff.aggregators.UnweightedAggregationFactory
                           | None) = None,
      weighting: str = client_reports.WEIGHT_BY_EXAMPLES_PROCESSED,
  ):
    sums = {'value_sum_factory': value_sum_factory,
            'weight_sum_factory': weight_sum_factory}
    for name, factory in sums.items():
      if factory is not None and not isinstance(
          factory, tff.aggregators.UnweightedAggregationFactory):
        raise TypeError(f'{name} must be an unweighted TFF aggregation '
                        f'factory, got {factory!r}')
    self._value_sum = value_sum_factory or precise_sum.Float64SumFactory()
    self._weight_sum = weight_sum_factory or precise_sum.Float64SumFactory()
    self._needs = client_reports.ClientWorkNeeds(
        full_report=True, coordinate_mask=True, weighting=weighting)

  @property
  def client_work_needs(self) -> client_reports.ClientWorkNeeds:
    """The full report with coordinate masks, weighted as `weighting`."""
    return self._needs

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    """An `AggregationProcess` computing the masked mean.

    Args:
      value_type: A client report type with `model_delta` and
        `coordinate_mask` (see the module docstring).
      weight_type: A numeric scalar type.

    Raises:
      TypeError: if `value_type` is not such a report.
    """
    value_type = tff.types.to_type(value_type)
    delta_type = _delta_type_of(value_type)
    value_sum_process = self._value_sum.create(delta_type)
    weight_sum_process = self._weight_sum.create(delta_type)

    @tff.tensorflow.computation(value_type, weight_type)
    def contributions(value, weight):
      value = _structure.to_python(value)
      deltas = _structure.flatten(value[client_reports.MODEL_DELTA],
                                  delta_type)
      masks = _structure.flatten(value[client_reports.COORDINATE_MASK],
                                 delta_type)
      wide_weight = tf.cast(weight, tf.float64)
      ok = (_structure.all_finite(deltas) & _structure.all_finite(masks)
            & tf.math.is_finite(wide_weight) & (wide_weight > 0))
      # tf.where, not a product: 0 * NaN would be NaN.
      weighted_masks = [
          tf.where(ok & (m > 0), tf.cast(weight, m.dtype), tf.zeros_like(m))
          for m in masks]
      weighted_deltas = [
          tf.where(wm > 0, d * wm, tf.zeros_like(d))
          for d, wm in zip(deltas, weighted_masks)]
      return collections.OrderedDict(
          weighted_delta=_structure.pack(weighted_deltas, delta_type),
          weighted_mask=_structure.pack(weighted_masks, delta_type),
          dropped=tf.cast(tf.logical_not(ok), COUNT_DTYPE))

    @tff.tensorflow.computation(
        value_sum_process.next.type_signature.result.result.member,
        weight_sum_process.next.type_signature.result.result.member,
        tff.TensorType(COUNT_DTYPE))
    def finish(value_total, weight_total, num_dropped):
      values = _structure.flatten(value_total, delta_type)
      weights = _structure.flatten(weight_total, delta_type)
      means = [tf.where(w > 0, tf.math.divide_no_nan(v, w), tf.zeros_like(v))
               for v, w in zip(values, weights)]
      uncovered = tf.add_n([tf.reduce_sum(tf.cast(w <= 0, COUNT_DTYPE))
                            for w in weights])
      return collections.OrderedDict(
          mean=_structure.pack(means, delta_type),
          measurements=collections.OrderedDict(
              num_dropped=num_dropped, num_uncovered=uncovered))

    @tff.federated_computation()
    def init_fn():
      return tff.federated_zip(collections.OrderedDict(
          value_sum_process=value_sum_process.initialize(),
          weight_sum_process=weight_sum_process.initialize()))

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS),
    )
    def next_fn(state, value, weight):
      parts = tff.federated_map(contributions, (value, weight))
      value_output = value_sum_process.next(state['value_sum_process'],
                                            parts['weighted_delta'])
      weight_output = weight_sum_process.next(state['weight_sum_process'],
                                              parts['weighted_mask'])
      done = tff.federated_map(finish, (
          value_output.result, weight_output.result,
          tff.federated_sum(parts['dropped'])))
      state = tff.federated_zip(collections.OrderedDict(
          value_sum_process=value_output.state,
          weight_sum_process=weight_output.state))
      measurements = tff.federated_zip(collections.OrderedDict(
          masked_mean=done['measurements'],
          value_sum=value_output.measurements,
          weight_sum=weight_output.measurements))
      return tff.templates.MeasuredProcessOutput(state, done['mean'],
                                                 measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)
