"""Learning-process builders, by name (`--algorithm`).

  * `fedavg`: federated averaging, McMahan et al. 2017 (arXiv 1602.05629),
    via `tff.learning.algorithms.build_weighted_fed_avg`, each client
    weighted by its number of examples. The server optimizer makes it FedOpt
    (Reddi et al. 2021, arXiv 2003.00295); SGD with learning rate 1 is plain
    FedAvg.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import registry
from tff_pipeline.algorithms import optimizers

ModelFn = Callable[[], tff.learning.models.VariableModel]
AlgorithmBuilder = Callable[
    [ModelFn, config_lib.TrainingConfig,
     tff.aggregators.WeightedAggregationFactory],
    tff.learning.templates.LearningProcess,
]

ALGORITHMS: registry.Registry[AlgorithmBuilder] = registry.Registry(
    'algorithm', '--algorithm'
)


@ALGORITHMS.register('fedavg', 'federated averaging weighted by example count')
def build_fedavg(
    model_fn: ModelFn,
    config: config_lib.TrainingConfig,
    model_aggregator: tff.aggregators.WeightedAggregationFactory,
) -> tff.learning.templates.LearningProcess:
  return tff.learning.algorithms.build_weighted_fed_avg(
      model_fn,
      client_optimizer_fn=optimizers.build_optimizer(config.client_optimizer),
      server_optimizer_fn=optimizers.build_optimizer(config.server_optimizer),
      client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
      model_aggregator=model_aggregator,
  )


def build_learning_process(
    model_fn: ModelFn,
    config: config_lib.TrainingConfig,
    model_aggregator: tff.aggregators.WeightedAggregationFactory,
) -> tff.learning.templates.LearningProcess:
  """Builds the process named by `config.algorithm`."""
  return ALGORITHMS.get(config.algorithm)(model_fn, config, model_aggregator)
