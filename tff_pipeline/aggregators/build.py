"""Model-update aggregators: a base chosen by name, wrapped by flags.

`--aggregator` picks the base aggregation of the clients' model updates:

  * `mean`: the weighted mean of FedAvg (McMahan et al. 2017), weights n_k,
    with the weighted values summed in float64 (`precise_sum.py`).
  * `compensated`: FedNova normalisation by local steps and q-FFL-style
    loss-aware reweighting around the mean (see `compensation.py`).
  * `median`, `trimmed_mean`: coordinate-wise robust statistics (Yin et al.
    2018; see `robust.py`), unweighted; `--trim_fraction` sets the trimming.

Wrappers switch on by their own flags and compose by wrapping factories, the
way `tff.learning.robust_aggregator` and `tff.learning.dp_aggregator` do,
from the inside out:

  1. the sum at the core of the mean is replaced by one of
     * `--dp_noise_multiplier > 0`: `tff.aggregators.
       DifferentiallyPrivateFactory` (DP-FedAvg, McMahan et al. 2018, arXiv
       1710.06963), with a fixed (`--dp_clip_norm`) or adaptive
       (`--dp_adaptive_clipping`, Andrew et al. 2021, arXiv 1905.03871) clip;
       it is unweighted, so with `mean` clients are weighted uniformly, and
       with `compensated` the compensation weights are folded into each
       client's contribution before clipping and noising;
     * `--secure_aggregation`: `tff.aggregators.SecureSumFactory` for the
       weighted values and the weights (Bonawitz et al. 2017), with the value
       bound adapted to twice the 95th percentile, as in
       `tff.learning.secure_aggregator`;
     * `--compression`: `tff.aggregators.EncodedSumFactory` quantizing every
       tensor above 20000 values to `--compression_bits` bits, as in
       `tff.learning.compression_aggregator`;
  2. `--clip_norm > 0`: L2 clipping of each update (`clipping_factory`);
  3. `--zeroing`: updates with a norm far above the recent ones are zeroed
     (`zeroing_factory` with TFF's adaptive 98th-percentile estimate).

The median and trimmed mean need the individual updates, so they cannot be
combined with DP, secure aggregation or compression; that rule, like every
rule about which settings combine, is in `config.check_combinations`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import registry
from tff_pipeline.aggregators import compensation
from tff_pipeline.aggregators import finite_guard
from tff_pipeline.aggregators import masked_mean
from tff_pipeline.aggregators import precise_sum
from tff_pipeline.aggregators import robust

Factory = (tff.aggregators.WeightedAggregationFactory
           | tff.aggregators.UnweightedAggregationFactory)
AggregatorBuilder = Callable[[config_lib.TrainingConfig],
                             tff.aggregators.WeightedAggregationFactory]

AGGREGATORS: registry.Registry[AggregatorBuilder] = registry.Registry(
    'aggregator', '--aggregator'
)

# Same settings as TFF's own adaptive estimates in tff.learning's composed
# aggregators (learning/model_update_aggregator.py).
# (The target quantile is --zeroing_quantile, 0.98 by default as in TFF.)
_ZEROING_NORM = dict(initial_estimate=10.0, learning_rate=math.log(10.0),
                     multiplier=2.0, increment=1.0)
_SECURE_BOUND = dict(initial_estimate=50.0, target_quantile=0.95,
                     learning_rate=1.0, multiplier=2.0)
_SECURE_MAX_WEIGHT = float(2**20 - 1)
COMPRESSION_THRESHOLD = 20000


def _core_mean(config: config_lib.TrainingConfig) -> Factory:
  """The mean, with its sum replaced as the DP/secure/compression flags say."""
  agg = config.aggregation
  if agg.dp:
    dp = tff.aggregators.DifferentiallyPrivateFactory
    if agg.dp_adaptive_clipping:
      # TFF splits the privacy budget between the clipped-count estimate and
      # the values, which needs noise_multiplier < 2 * clipped_count_stddev.
      # Its default stddev, 0.05 * clients_per_round, is too small for small
      # cohorts; a stddev of at least the noise multiplier always works.
      return dp.gaussian_adaptive(
          noise_multiplier=agg.dp_noise_multiplier,
          clients_per_round=config.clients_per_round,
          initial_l2_norm_clip=agg.dp_clip_norm,
          clipped_count_stddev=max(0.05 * config.clients_per_round,
                                   agg.dp_noise_multiplier))
    return dp.gaussian_fixed(
        noise_multiplier=agg.dp_noise_multiplier,
        clients_per_round=config.clients_per_round, clip=agg.dp_clip_norm)
  if agg.secure_aggregation:
    bound = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        secure_estimation=True, **_SECURE_BOUND)
    return tff.aggregators.MeanFactory(
        value_sum_factory=tff.aggregators.SecureSumFactory(bound),
        weight_sum_factory=tff.aggregators.SecureSumFactory(
            upper_bound_threshold=_SECURE_MAX_WEIGHT,
            lower_bound_threshold=0.0))
  if agg.compression:
    return tff.aggregators.MeanFactory(
        tff.aggregators.EncodedSumFactory.quantize_above_threshold(
            quantization_bits=agg.compression_bits,
            threshold=COMPRESSION_THRESHOLD))
  # Summing in float64 makes the mean independent of how the clients are
  # grouped, e.g. across --workers (see precise_sum.py).
  return tff.aggregators.MeanFactory(
      value_sum_factory=precise_sum.Float64SumFactory())


def _wrapped(config: config_lib.TrainingConfig, core: Factory) -> Factory:
  """Clipping, then zeroing, around `core`, as the flags say."""
  agg = config.aggregation
  count_sum = (tff.aggregators.SecureSumFactory(1, 0)
               if agg.secure_aggregation else None)
  # Non-finite updates never reach clipping, zeroing or DP (finite_guard.py).
  factory = finite_guard.dp_factory(core) if agg.dp else core
  if agg.clip_norm > 0:
    factory = finite_guard.clipping_factory(
        agg.clip_norm, factory, clipped_count_sum_factory=count_sum)
  if agg.zeroing:
    norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        secure_estimation=agg.secure_aggregation,
        target_quantile=agg.zeroing_quantile, **_ZEROING_NORM)
    factory = finite_guard.zeroing_factory(
        norm, factory, zeroed_count_sum_factory=count_sum)
  return factory


def _as_weighted(factory: Factory) -> tff.aggregators.WeightedAggregationFactory:
  if isinstance(factory, tff.aggregators.UnweightedAggregationFactory):
    return tff.aggregators.as_weighted_aggregator(factory)
  return factory


@AGGREGATORS.register('mean', 'weighted mean of the updates (FedAvg)')
def _mean(
    config: config_lib.TrainingConfig,
) -> tff.aggregators.WeightedAggregationFactory:
  return _as_weighted(_wrapped(config, _core_mean(config)))


@AGGREGATORS.register(
    'compensated',
    'normalise updates by local steps (FedNova) and reweight by client loss '
    '(--compensation_q)')
def _compensated(
    config: config_lib.TrainingConfig,
) -> tff.aggregators.WeightedAggregationFactory:
  return compensation.CompensatedFactory(
      normalize_local_steps=config.aggregation.compensation_normalize,
      loss_power=config.aggregation.compensation_q,
      max_loss_factor=config.aggregation.compensation_max_factor,
      inner=_wrapped(config, _core_mean(config)),
  )


@AGGREGATORS.register('median', 'coordinate-wise median (Yin et al. 2018)')
def _median(
    config: config_lib.TrainingConfig,
) -> tff.aggregators.WeightedAggregationFactory:
  # No sum to replace: the statistic needs the individual updates.
  return _wrapped(config, robust.MedianFactory())


@AGGREGATORS.register(
    'trimmed_mean',
    'coordinate-wise mean without the --trim_fraction extremes (Yin et al. '
    '2018)')
def _trimmed_mean(
    config: config_lib.TrainingConfig,
) -> tff.aggregators.WeightedAggregationFactory:
  return _wrapped(config,
                  robust.TrimmedMeanFactory(config.aggregation.trim_fraction))


def build_masked_mean(
    config: config_lib.TrainingConfig,
) -> masked_mean.MaskedMeanFactory:
  """The masked mean of width-scaled sub-models (`--model_width_policy`).

  `--aggregator=mean` becomes it when clients train sub-models (HeteroFL):
  each coordinate averaged over the clients that hold it. Its two sums are
  the float64 sums of `mean`, or secure sums with `--secure_aggregation`
  (the mean's adaptive value bound; the weight sum, now model-sized, with
  the mean's weight bound). `config.check_combinations` refuses what
  cannot compose with it (docs/heterofl.md).
  """
  if config.aggregation.secure_aggregation:
    bound = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        secure_estimation=True, **_SECURE_BOUND)
    return masked_mean.MaskedMeanFactory(
        value_sum_factory=tff.aggregators.SecureSumFactory(bound),
        weight_sum_factory=tff.aggregators.SecureSumFactory(
            upper_bound_threshold=_SECURE_MAX_WEIGHT,
            lower_bound_threshold=0.0))
  return masked_mean.MaskedMeanFactory()


def build_aggregator(
    config: config_lib.TrainingConfig,
) -> tff.aggregators.WeightedAggregationFactory:
  """The model aggregator selected by `config.aggregator` and its flags.

  Raises:
    errors.UsageError: if the name is unknown. (Settings that do not go
      together never reach here: `config.check_combinations` refuses them
      when the config is constructed.)
  """
  builder = AGGREGATORS.get(config.aggregator)
  return builder(config)
