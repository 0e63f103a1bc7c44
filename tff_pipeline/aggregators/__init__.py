"""Model-update aggregators, as `tff.aggregators` factories chosen by name.

`--aggregator` picks the base aggregation of the clients' model updates:

  * `mean`: the weighted mean of FedAvg (McMahan et al. 2017), weights n_k.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import registry

AggregatorBuilder = Callable[
    [config_lib.TrainingConfig], tff.aggregators.WeightedAggregationFactory
]

AGGREGATORS: registry.Registry[AggregatorBuilder] = registry.Registry(
    'aggregator', '--aggregator'
)


@AGGREGATORS.register('mean', 'weighted mean of the updates (FedAvg)')
def _mean(
    config: config_lib.TrainingConfig,
) -> tff.aggregators.WeightedAggregationFactory:
  del config
  return tff.aggregators.MeanFactory()


def build_aggregator(
    config: config_lib.TrainingConfig,
) -> tff.aggregators.WeightedAggregationFactory:
  """The model aggregator selected by `config.aggregator`."""
  return AGGREGATORS.get(config.aggregator)(config)
