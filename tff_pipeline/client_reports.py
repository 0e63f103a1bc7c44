"""What client work reports to a model aggregator, and what a factory needs.

Client work and aggregation meet here, so that neither package imports the
other: `algorithms/` builds client work that reports, `aggregators/` builds
factories that consume reports, and both import only this module.

Our self-reporting client work (`algorithms.compensation_client_work`) sends
each client's update as the structure

    <model_delta=T, local_steps=float32, pre_training_loss=float32>

with an update weight: tau_i (`local_steps`) is what the FedNova
normalisation of Wang et al. 2020 (arXiv 2007.07481) divides by, and L_i
(`pre_training_loss`, the loss of the incoming global model on the client's
data) is what the q-FFL-style reweighting of Li et al. 2020 (arXiv
1905.10497) raises weights by.

Client work that trains a width-scaled HeteroFL sub-model (Diao et al. 2021,
arXiv 2010.01264; `models/width.py`) adds `coordinate_mask`, of the model
delta's type: 1.0 where its sub-model holds the coordinate, 0.0 elsewhere
(where its `model_delta` is 0). The masked mean
(`aggregators/masked_mean.py`) averages each coordinate over the clients
that hold it.

A factory declares what it needs from client work with a `client_work_needs`
attribute holding a `ClientWorkNeeds`, the way TFF factories declare what they
accept in `create`. A factory without the attribute (every TFF factory, and
ours that aggregate model deltas) needs `MODEL_DELTA_ONLY`: the learning
process then gives it the model delta alone, through
`ModelDeltaOnlyFactory`. Algorithm builders read `needs_of(factory)`; they
never test a factory's class.
"""

from __future__ import annotations

import dataclasses

import tensorflow_federated as tff

from tff_pipeline import _structure

# The keys of the reported update, in this order.
MODEL_DELTA = 'model_delta'
LOCAL_STEPS = 'local_steps'
PRE_TRAINING_LOSS = 'pre_training_loss'
COORDINATE_MASK = 'coordinate_mask'

WEIGHT_BY_DATA_SIZE = 'data_size'
"""Update weight n_i, the client's number of examples."""
WEIGHT_BY_EXAMPLES_PROCESSED = 'examples_processed'
"""Update weight: the examples seen in local training (TFF's
`ClientWeighting.NUM_EXAMPLES`, as TFF's FedAvg weights clients)."""
WEIGHTINGS = (WEIGHT_BY_DATA_SIZE, WEIGHT_BY_EXAMPLES_PROCESSED)


@dataclasses.dataclass(frozen=True)
class ClientWorkNeeds:
  """What an aggregation factory needs from the clients' work.

  Attributes:
    full_report: The factory consumes the whole reported update
      `{model_delta, local_steps, pre_training_loss}`; otherwise it takes
      the model delta alone.
    pre_training_loss: Clients must measure L_i before training (an extra
      pass over their data); otherwise they report 0.
    weighting: The update weight, one of `WEIGHTINGS`.
    coordinate_mask: Clients must add `coordinate_mask` to the full report:
      which coordinates of the model delta their (width-scaled) sub-model
      holds.
  """

  full_report: bool = False
  pre_training_loss: bool = False
  weighting: str = WEIGHT_BY_EXAMPLES_PROCESSED
  coordinate_mask: bool = False

  def __post_init__(self):
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f'unknown weighting {self.weighting!r}; expected one '
                       f'of {WEIGHTINGS}')
    for part in ('pre_training_loss', 'coordinate_mask'):
      if getattr(self, part) and not self.full_report:
        raise ValueError(f'{part} is part of the full report')


MODEL_DELTA_ONLY = ClientWorkNeeds()
"""The needs of a factory that declares none: the model delta, weighted by
the examples processed, as TFF's FedAvg."""


def needs_of(factory: object) -> ClientWorkNeeds:
  """The `client_work_needs` that `factory` declares, or `MODEL_DELTA_ONLY`."""
  needs = getattr(factory, 'client_work_needs', MODEL_DELTA_ONLY)
  if not isinstance(needs, ClientWorkNeeds):
    raise TypeError(f'{factory!r}.client_work_needs must be a '
                    f'ClientWorkNeeds, got {needs!r}')
  return needs


def for_reported_updates(
    factory: tff.aggregators.WeightedAggregationFactory,
) -> tff.aggregators.WeightedAggregationFactory:
  """A factory that accepts the full reported update.

  `factory` itself if it declares `full_report`, otherwise `factory` behind
  a `ModelDeltaOnlyFactory`.
  """
  if needs_of(factory).full_report:
    return factory
  return ModelDeltaOnlyFactory(factory)


class ModelDeltaOnlyFactory(tff.aggregators.WeightedAggregationFactory):
  """Feeds the model delta of a reported update to an ordinary factory.

  Lets the self-reporting client work (used for FedProx, whose proximal term
  TFF 0.87 gets wrong, and for fault injection) run with any aggregator: the
  update's `local_steps` and `pre_training_loss` are dropped and
  `model_delta` goes to `inner` with the client's weight. Measurements and
  state are the inner process's.
  """

  def __init__(self, inner: tff.aggregators.WeightedAggregationFactory):
    if not isinstance(inner, tff.aggregators.WeightedAggregationFactory):
      raise TypeError(f'inner must be a weighted factory, got {inner}')
    self._inner = inner

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    value_type = tff.types.to_type(value_type)
    delta_type = value_type[MODEL_DELTA]
    inner_process = self._inner.create(delta_type, weight_type)

    @tff.tensorflow.computation(value_type)
    def model_delta_of(value):
      return _structure.to_python(value)[MODEL_DELTA]

    @tff.federated_computation(
        inner_process.initialize.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS),
    )
    def next_fn(state, value, weight):
      return inner_process.next(
          state, tff.federated_map(model_delta_of, value), weight)

    return tff.templates.AggregationProcess(inner_process.initialize, next_fn)
