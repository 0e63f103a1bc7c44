"""The compensation-aware aggregator: FedNova normalisation + q-FFL weights.

Clients differ in compute (local steps tau_i) and in data (non-IID). Plain
weighted FedAvg then has two faults, and this aggregator corrects both:

1. Objective inconsistency. With heterogeneous tau_i, FedAvg converges to the
   optimum of a surrogate objective weighted by p_i * tau_i rather than of
   sum_i p_i F_i. FedNova (Wang et al. 2020, "Tackling the Objective
   Inconsistency Problem in Heterogeneous Federated Optimization", arXiv
   2007.07481) normalises each update by its tau_i and rescales the average
   by tau_eff = sum_i p_i tau_i:

       update = tau_eff * sum_i p_i * delta_i / tau_i.

2. Lagging clients. Loss-aware reweighting in the spirit of q-FFL (Li et al.
   2020, "Fair Resource Allocation in Federated Learning", arXiv 1905.10497)
   gives client i the weight

       w_i = n_i * (L_i / Lbar)^q,    Lbar = sum_i n_i L_i / sum_i n_i,

   where L_i is the loss of the incoming global model on the client's data.
   q = 0 turns it off. The p_i above are the normalised w_i. The loss factor
   (L_i / Lbar)^q is clipped to [1/c, c] (`max_loss_factor` c): without a
   bound, one client whose loss is far above the others' takes most of a
   round's weight, and the global model swings towards it and back (we saw
   a single client take 73% of a round on MNIST with a feature-skewed
   minority). The bound keeps the reweighting a nudge towards lagging
   clients.

With equal tau_i and q = 0 this is exactly weighted FedAvg.

Inputs are the clients' full reports (`tff_pipeline.client_reports`, sent by
`algorithms.compensation_client_work`): each client sends
`{model_delta, local_steps, pre_training_loss}` with weight n_i, as the
factory declares in `client_work_needs`. The
factory does its per-client arithmetic in CLIENTS-placed computations and
hands the normalised, reweighted deltas to an *inner* factory, so it composes
with TFF's own factories the way TFF's wrappers do:

  * a weighted inner factory (default `tff.aggregators.MeanFactory`, or
    clipping/zeroing around it) receives (delta_i / tau_i, w_i);
  * an unweighted inner factory (e.g. `tff.aggregators.
    DifferentiallyPrivateFactory` or a secure-sum mean) receives
    (w_i / wbar) * delta_i / tau_i, where wbar is the mean weight over the
    round's clients, so its unweighted mean equals the weighted one. DP then
    clips these contributions.

Guards: a client whose delta, tau_i, weight or (when q > 0) loss is NaN or
+-inf, or whose tau_i or weight is not positive, is dropped (weight 0). When
the total weight is zero the update is zero. The clipped loss factor cannot
overflow float32 whatever q.

Measurements (all at SERVER, float32 unless noted):
  tau_eff                 sum_i p_i tau_i (1 without normalisation)
  min_effective_weight    smallest p_i among kept clients
  max_effective_weight    largest p_i
  num_reweighted          clients whose loss factor differs from 1 by > 1%
  num_dropped             clients dropped by the guards
  mean_pre_training_loss  Lbar
  zero_total_weight       1 if every client was dropped, else 0
  inner                   the inner process's measurements
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import _structure
from tff_pipeline import client_reports

DEFAULT_MAX_LOSS_FACTOR = 3.0
REWEIGHT_TOLERANCE = 0.01

_F32 = np.float32


class CompensatedFactory(tff.aggregators.WeightedAggregationFactory):
  """FedNova normalisation and loss-aware reweighting around an inner factory.

  Args:
    normalize_local_steps: Apply the FedNova normalisation by tau_i.
    loss_power: q of the loss-aware reweighting; 0 turns it off.
    max_loss_factor: c >= 1; the loss factor is clipped to [1/c, c].
    inner: Factory that aggregates the compensated deltas: weighted or
      unweighted. Defaults to `tff.aggregators.MeanFactory()`.
  """

  def __init__(
      self,
      *,
      normalize_local_steps: bool = True,
      loss_power: float = 0.0,
      max_loss_factor: float = DEFAULT_MAX_LOSS_FACTOR,
      inner: (tff.aggregators.WeightedAggregationFactory
              | tff.aggregators.UnweightedAggregationFactory | None) = None,
  ):
    if not (np.isfinite(loss_power) and loss_power >= 0):
      raise ValueError(f'loss_power (q) must be finite and >= 0, got '
                       f'{loss_power}')
    if not (np.isfinite(max_loss_factor) and max_loss_factor >= 1):
      raise ValueError(f'max_loss_factor must be finite and >= 1, got '
                       f'{max_loss_factor}')
    if inner is None:
      inner = tff.aggregators.MeanFactory()
    if not isinstance(inner, (tff.aggregators.WeightedAggregationFactory,
                              tff.aggregators.UnweightedAggregationFactory)):
      raise TypeError(f'inner must be a TFF aggregation factory, got {inner}')
    self._normalize = bool(normalize_local_steps)
    self._q = float(loss_power)
    self._max_factor = float(max_loss_factor)
    self._inner = inner

  @property
  def measures_loss(self) -> bool:
    """Whether clients need to measure their pre-training loss."""
    return self._q > 0

  @property
  def client_work_needs(self) -> client_reports.ClientWorkNeeds:
    """The full report, weighted by n_i; L_i only when q > 0."""
    return client_reports.ClientWorkNeeds(
        full_report=True, pre_training_loss=self.measures_loss,
        weighting=client_reports.WEIGHT_BY_DATA_SIZE)

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    value_type = tff.types.to_type(value_type)
    delta_type = value_type[client_reports.MODEL_DELTA]
    weighted_inner = isinstance(self._inner,
                                tff.aggregators.WeightedAggregationFactory)
    if weighted_inner:
      inner_process = self._inner.create(delta_type, tff.TensorType(_F32))
    else:
      inner_process = self._inner.create(delta_type)
    normalize, q, max_factor = self._normalize, self._q, self._max_factor

    @tff.tensorflow.computation(value_type, weight_type)
    def sanitize(value, weight):
      value = _structure.to_python(value)
      delta = value[client_reports.MODEL_DELTA]
      tau = value[client_reports.LOCAL_STEPS]
      loss = value[client_reports.PRE_TRAINING_LOSS]
      weight = tf.cast(weight, tf.float32)
      ok = _structure.all_finite(delta)
      ok = ok & tf.math.is_finite(weight) & (weight > 0)
      ok = ok & tf.math.is_finite(tau) & (tau > 0)
      if q > 0:
        ok = ok & tf.math.is_finite(loss) & (loss >= 0)
      keep = tf.cast(ok, tf.float32)
      safe_tau = tf.where(ok, tau, 1.0)
      scale = 1.0 / safe_tau if normalize else tf.constant(1.0)
      delta = tf.nest.map_structure(
          lambda d: tf.where(ok, d * tf.cast(scale, d.dtype),
                             tf.zeros_like(d)), delta)
      return collections.OrderedDict(
          delta=delta, tau=safe_tau * keep, loss=tf.where(ok, loss, 0.0),
          weight=weight * keep, kept=keep)

    clean_type = sanitize.type_signature.result

    @tff.tensorflow.computation(clean_type)
    def loss_totals(clean):
      return collections.OrderedDict(
          weighted_loss=clean['weight'] * clean['loss'],
          weight=clean['weight'], kept=clean['kept'], clients=_F32(1.0))

    @tff.tensorflow.computation(loss_totals.type_signature.result)
    def mean_loss(totals):
      return tf.math.divide_no_nan(totals['weighted_loss'], totals['weight'])

    @tff.tensorflow.computation(clean_type, tff.TensorType(_F32))
    def effective_weight(clean, mean_loss_value):
      if q > 0:
        ratio = tf.where(mean_loss_value > 0,
                         tf.math.divide_no_nan(clean['loss'], mean_loss_value),
                         1.0)
        factor = tf.clip_by_value(tf.pow(ratio, q), 1.0 / max_factor,
                                  max_factor)
      else:
        factor = tf.constant(1.0)
      weight = clean['weight'] * factor
      reweighted = clean['kept'] * tf.cast(
          tf.abs(factor - 1.0) > REWEIGHT_TOLERANCE, tf.float32)
      return collections.OrderedDict(
          delta=clean['delta'], weight=weight,
          weighted_tau=weight * clean['tau'], reweighted=reweighted,
          # For the min over kept clients, dropped ones must not count.
          weight_for_min=tf.where(clean['kept'] > 0, weight, np.inf))

    eff_type = effective_weight.type_signature.result

    @tff.tensorflow.computation(eff_type)
    def weight_totals(eff):
      return collections.OrderedDict(
          weight=eff['weight'], weighted_tau=eff['weighted_tau'],
          reweighted=eff['reweighted'])

    @tff.tensorflow.computation(eff_type)
    def weighted_inputs(eff):
      return eff['delta'], eff['weight']

    @tff.tensorflow.computation(eff_type, tff.TensorType(_F32))
    def unweighted_input(eff, mean_weight):
      eff = _structure.to_python(eff)
      factor = tf.math.divide_no_nan(eff['weight'], mean_weight)
      return tf.nest.map_structure(lambda d: d * tf.cast(factor, d.dtype),
                                   eff['delta'])

    @tff.tensorflow.computation(eff_type)
    def min_weight_of(eff):
      return eff['weight_for_min']

    @tff.tensorflow.computation(eff_type)
    def max_weight_of(eff):
      return eff['weight']

    result_type = inner_process.next.type_signature.result.result.member
    totals_type = weight_totals.type_signature.result

    @tff.tensorflow.computation(result_type, totals_type)
    def rescale(aggregate, totals):
      aggregate = _structure.to_python(aggregate)
      tau_eff = tf.math.divide_no_nan(totals['weighted_tau'], totals['weight'])
      factor = tau_eff if normalize else tf.constant(1.0)
      nonzero = totals['weight'] > 0
      return tf.nest.map_structure(
          lambda a: tf.where(nonzero, a * tf.cast(factor, a.dtype),
                             tf.zeros_like(a)), aggregate)

    @tff.tensorflow.computation(totals_type, loss_totals.type_signature.result,
                                tff.TensorType(_F32), tff.TensorType(_F32),
                                tff.TensorType(_F32))
    def summarize(totals, losses, min_weight, max_weight, lbar):
      total = totals['weight']
      tau_eff = (tf.math.divide_no_nan(totals['weighted_tau'], total)
                 if normalize else tf.constant(1.0))
      nonzero = total > 0
      return collections.OrderedDict(
          tau_eff=tf.where(nonzero, tau_eff, 0.0),
          min_effective_weight=tf.where(
              nonzero, tf.math.divide_no_nan(min_weight, total), 0.0),
          max_effective_weight=tf.where(
              nonzero, tf.math.divide_no_nan(max_weight, total), 0.0),
          num_reweighted=totals['reweighted'],
          num_dropped=losses['clients'] - losses['kept'],
          mean_pre_training_loss=lbar,
          zero_total_weight=tf.cast(tf.logical_not(nonzero), tf.float32))

    @tff.federated_computation
    def init_fn():
      return inner_process.initialize()

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS),
    )
    def next_fn(state, value, weight):
      clean = tff.federated_map(sanitize, (value, weight))
      losses = tff.federated_sum(tff.federated_map(loss_totals, clean))
      lbar = tff.federated_map(mean_loss, losses)
      eff = tff.federated_map(effective_weight,
                              (clean, tff.federated_broadcast(lbar)))
      totals = tff.federated_sum(tff.federated_map(weight_totals, eff))
      if weighted_inner:
        deltas, weights = tff.federated_map(weighted_inputs, eff)
        inner_output = inner_process.next(state, deltas, weights)
      else:
        mean_weight = tff.federated_map(_mean_weight, (totals, losses))
        contributions = tff.federated_map(
            unweighted_input, (eff, tff.federated_broadcast(mean_weight)))
        inner_output = inner_process.next(state, contributions)
      result = tff.federated_map(rescale, (inner_output.result, totals))
      min_weight = tff.federated_min(tff.federated_map(min_weight_of, eff))
      max_weight = tff.federated_max(tff.federated_map(max_weight_of, eff))
      measurements = tff.federated_map(
          summarize, (totals, losses, min_weight, max_weight, lbar))
      measurements = tff.federated_zip(collections.OrderedDict(
          compensation=measurements, inner=inner_output.measurements))
      return tff.templates.MeasuredProcessOutput(
          inner_output.state, result, measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)


@tff.tensorflow.computation
def _mean_weight(totals, losses):
  # Dropped clients count in the unweighted inner mean as zero contributions,
  # so the mean weight is over all of the round's clients.
  return tf.math.divide_no_nan(totals['weight'], losses['clients'])


def compensated_average(
    deltas: np.ndarray,
    local_steps: np.ndarray,
    losses: np.ndarray,
    weights: np.ndarray,
    *,
    loss_power: float = 0.0,
    max_loss_factor: float = DEFAULT_MAX_LOSS_FACTOR,
    normalize_local_steps: bool = True,
) -> tuple[np.ndarray, dict[str, float]]:
  """NumPy reference of what one round of `CompensatedFactory` computes.

  Args:
    deltas: Client model deltas, shape [num_clients, ...].
    local_steps: tau_i, shape [num_clients].
    losses: L_i, shape [num_clients].
    weights: n_i, shape [num_clients].
    loss_power: q.
    max_loss_factor: c; the loss factor is clipped to [1/c, c].
    normalize_local_steps: Apply the FedNova normalisation.

  Returns:
    (aggregated update, measurements) with the factory's measurement names.
  """
  deltas = np.asarray(deltas, np.float64)
  tau = np.asarray(local_steps, np.float64)
  loss = np.asarray(losses, np.float64)
  n = np.asarray(weights, np.float64)
  flat = deltas.reshape(len(deltas), -1)
  kept = (np.isfinite(flat).all(axis=1) & np.isfinite(n) & (n > 0)
          & np.isfinite(tau) & (tau > 0))
  if loss_power > 0:
    kept &= np.isfinite(loss) & (loss >= 0)
  n = np.where(kept, n, 0.0)
  loss = np.where(kept, loss, 0.0)
  tau = np.where(kept, tau, 0.0)
  lbar = (n * loss).sum() / n.sum() if n.sum() > 0 else 0.0
  if loss_power > 0:
    ratio = loss / lbar if lbar > 0 else np.ones_like(loss)
    with np.errstate(divide='ignore'):
      factor = np.clip(ratio**loss_power, 1 / max_loss_factor,
                       max_loss_factor)
  else:
    factor = np.ones_like(n)
  w = n * factor
  total = w.sum()
  measurements = {
      'num_dropped': float((~kept).sum()),
      'num_reweighted': float((kept & (np.abs(factor - 1) > REWEIGHT_TOLERANCE)
                               ).sum()),
      'mean_pre_training_loss': float(lbar),
      'zero_total_weight': float(total == 0),
  }
  if total == 0:
    measurements.update(tau_eff=0.0, min_effective_weight=0.0,
                        max_effective_weight=0.0)
    return np.zeros(deltas.shape[1:]), measurements
  p = w / total
  safe_flat = np.where(kept[:, None], flat, 0.0)
  if normalize_local_steps:
    tau_eff = float((p * tau).sum())
    normalized = safe_flat / np.where(kept, tau, 1.0)[:, None]
    update = tau_eff * (p[:, None] * normalized).sum(axis=0)
  else:
    tau_eff = 1.0
    update = (p[:, None] * safe_flat).sum(axis=0)
  measurements.update(
      tau_eff=tau_eff,
      min_effective_weight=float(p[kept].min()),
      max_effective_weight=float(p[kept].max()),
  )
  return update.reshape(deltas.shape[1:]), measurements
