"""Learning-process builders, by name (`--algorithm`).

  * `fedavg`: federated averaging, McMahan et al. 2017 (arXiv 1602.05629),
    via `tff.learning.algorithms.build_weighted_fed_avg`, each client
    weighted by its number of examples. The server optimizer makes it FedOpt
    (Reddi et al. 2021, arXiv 2003.00295); SGD with learning rate 1 is plain
    FedAvg.
  * `fedprox`: FedAvg with the proximal term (mu/2)||w - w_t||^2 in each
    client's objective, Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks" (arXiv 1812.06127); mu is `--proximal_strength`,
    and mu = 0 is FedAvg. Not `build_weighted_fed_prox`: TFF 0.87 adds
    mu (w_t - w) to the gradient instead of mu (w - w_t), which pushes
    clients away from the global model (see tests/algorithms). We compose the
    same process from TFF's templates around our client work, whose proximal
    term has the right sign.
  * `fedsgd`: each client computes the gradient of its loss on its data (one
    pass, no local steps) and the server applies the example-weighted mean
    gradient with the server optimizer (McMahan et al. 2017's FedSGD), via
    `tff.learning.algorithms.build_fed_sgd`. With all clients and full-batch
    gradients it is exactly gradient descent on the pooled data, with step
    size `--server_learning_rate`.

When the aggregator declares that it needs the clients' full reports (the
compensated one: `client_reports.ClientWorkNeeds`), or faults corrupt
updates, FedAvg is assembled from TFF's templates
(`tff.learning.templates.compose_learning_process`) around our client work,
which trains on a local-step budget and reports tau_i and L_i (see
`compensation_client_work` and `tff_pipeline/client_reports.py`).

Which algorithms combine with which aggregators and faults is decided in
`config.check_combinations`.

A builder returns an `Algorithm`: the learning process, plus how the training
loop must package a client's data for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import client_reports
from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import faults
from tff_pipeline import registry
from tff_pipeline.algorithms import compensation_client_work
from tff_pipeline.algorithms import optimizers
from tff_pipeline.models import width as width_lib

ModelFn = Callable[[], tff.learning.models.VariableModel]
CLIENT_LOOP = tff.learning.LoopImplementation.DATASET_ITERATOR
"""The client training loop of every TFF-built algorithm: an iterator loop, a
third less worker CPU than `Dataset.reduce` (see
`compensation_client_work.iterate`)."""

ClientInputFn = Callable[[tf.data.Dataset, int, int, int], Any]
"""(one shuffled epoch of batches, local-step budget, n_i, fault code) ->
client data."""


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A learning process and the client data format it expects.

  Attributes:
    process: The `tff.learning.templates.LearningProcess`.
    client_input: Packages one epoch of a client's batches, its budget of
      local steps, its number of examples and its fault code into what
      `process.next` takes for that client.
  """

  process: tff.learning.templates.LearningProcess
  client_input: ClientInputFn


def repeated_batches(batches: tf.data.Dataset, local_steps: int,
                     num_examples: int, fault: int) -> tf.data.Dataset:
  """Cycles through the epoch's batches for `local_steps` steps.

  The epoch is shuffled anew on each pass (the loop shuffles with
  `reshuffle_each_iteration=True`), as in `shuffle().batch().repeat(E)`.
  TFF's client work counts the examples it sees, so `num_examples` is unused;
  update faults need the composed client work, so `fault` must be honest.
  """
  del num_examples
  _require_honest(fault)
  return batches.repeat().take(local_steps)


def _require_honest(fault: int) -> None:
  if fault not in (faults.HONEST, faults.ZERO_EXAMPLES):
    raise errors.UsageError(
        'this algorithm cannot inject update faults; use --algorithm=fedavg '
        'or fedprox with --faulty_mode')


AlgorithmBuilder = Callable[
    [ModelFn, config_lib.TrainingConfig,
     tff.aggregators.WeightedAggregationFactory],
    Algorithm,
]

ALGORITHMS: registry.Registry[AlgorithmBuilder] = registry.Registry(
    'algorithm', '--algorithm'
)


def _build_composed(
    model_fn: ModelFn,
    config: config_lib.TrainingConfig,
    factory: tff.aggregators.WeightedAggregationFactory,
    proximal_strength: float = 0.0,
    width_spec: width_lib.WidthSpec | None = None,
    output_scaler: bool = False,
) -> Algorithm:
  """FedAvg/FedProx composed from TFF templates around our client work.

  The client work reports what `factory` declares it needs
  (`client_reports.needs_of`): an aggregator that consumes the full report
  gets it; any other receives the model delta, weighted by the examples
  processed as in TFF's FedAvg. With a `width_spec`, clients train
  width-scaled sub-models (`build_width_masked`), with HeteroFL's scaler
  if `output_scaler`.

  Raises:
    ValueError: if `width_spec` is given and `factory` does not consume
      coordinate masks (it would average the zeros of clients that do not
      hold a coordinate), or `output_scaler` is set without `width_spec`.
  """
  needs = client_reports.needs_of(factory)
  if width_spec is not None and not needs.coordinate_mask:
    raise ValueError(f'{factory!r} does not consume coordinate masks; '
                     'width-scaled sub-models need the masked mean')
  factory = client_reports.for_reported_updates(factory)

  @tff.tensorflow.computation
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(model_fn())

  model_weights_type = initial_model_weights_fn.type_signature.result
  client_work = compensation_client_work.build_compensation_client_work(
      model_fn, optimizers.build_optimizer(config.client_optimizer),
      proximal_strength=proximal_strength,
      measure_loss=needs.pre_training_loss,
      weighting=needs.weighting,
      width_spec=width_spec,
      output_scaler=output_scaler,
  )
  update_type = client_work.next.type_signature.result.result.member.update
  process = tff.learning.templates.compose_learning_process(
      initial_model_weights_fn,
      tff.learning.templates.build_broadcast_process(model_weights_type),
      client_work,
      factory.create(update_type, tff.TensorType(np.float32)),
      tff.learning.templates.build_apply_optimizer_finalizer(
          optimizers.build_optimizer(config.server_optimizer),
          model_weights_type),
  )
  if width_spec is None:
    return Algorithm(process, compensation_client_work.client_input)
  return Algorithm(process, compensation_client_work.width_client_input(
      width_spec, output_scaler=output_scaler))


def build_width_masked(
    model_fn: ModelFn,
    config: config_lib.TrainingConfig,
    factory: tff.aggregators.WeightedAggregationFactory,
    spec: width_lib.WidthSpec,
    *,
    output_scaler: bool = False,
) -> Algorithm:
  """HeteroFL (Diao et al. 2021, arXiv 2010.01264): FedAvg of sub-models.

  FedAvg (FedProx with `config.proximal_strength`) composed around
  `compensation_client_work.build_width_masked_client_work`: each client
  trains the sub-model of its width, and `factory` (the masked mean,
  `aggregators.masked_mean.MaskedMeanFactory`) averages each coordinate
  over the clients that hold it. The `Algorithm`'s `client_input` takes
  the client's width as a fifth argument (default 1). With `output_scaler`,
  clients apply the paper's scaler (sec. 3): hidden layers' outputs divided
  by the width in local training. `training.loop.build_algorithm` builds
  it for `--algorithm=fedavg` (mu = 0) or `fedprox` when
  `--model_width_policy` is not `full`.
  """
  mu = config.proximal_strength if config.algorithm == 'fedprox' else 0.0
  return _build_composed(model_fn, config, factory, proximal_strength=mu,
                         width_spec=spec, output_scaler=output_scaler)


@ALGORITHMS.register('fedavg', 'federated averaging weighted by example count')
def build_fedavg(
    model_fn: ModelFn,
    config: config_lib.TrainingConfig,
    model_aggregator: tff.aggregators.WeightedAggregationFactory,
) -> Algorithm:
  if (client_reports.needs_of(model_aggregator).full_report
      or config.faults.corrupts_updates):
    return _build_composed(model_fn, config, model_aggregator)
  process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn,
      client_optimizer_fn=optimizers.build_optimizer(config.client_optimizer),
      server_optimizer_fn=optimizers.build_optimizer(config.server_optimizer),
      client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
      model_aggregator=model_aggregator,
      loop_implementation=CLIENT_LOOP,
  )
  return Algorithm(process, repeated_batches)


@ALGORITHMS.register('fedprox',
                     'FedAvg plus a proximal term of strength '
                     '--proximal_strength (Li et al. 2020)')
def build_fedprox(
    model_fn: ModelFn,
    config: config_lib.TrainingConfig,
    model_aggregator: tff.aggregators.WeightedAggregationFactory,
) -> Algorithm:
  return _build_composed(model_fn, config, model_aggregator,
                         proximal_strength=config.proximal_strength)


def one_pass(batches: tf.data.Dataset, local_steps: int,
             num_examples: int, fault: int) -> tf.data.Dataset:
  """FedSGD's client data: one pass, cut to the budget for stragglers."""
  del num_examples
  _require_honest(fault)
  return batches.take(local_steps)


@ALGORITHMS.register('fedsgd',
                     'one full-data gradient per client per round, applied '
                     'by the server optimizer')
def build_fedsgd(
    model_fn: ModelFn,
    config: config_lib.TrainingConfig,
    model_aggregator: tff.aggregators.WeightedAggregationFactory,
) -> Algorithm:
  process = tff.learning.algorithms.build_fed_sgd(
      model_fn,
      server_optimizer_fn=optimizers.build_optimizer(config.server_optimizer),
      model_aggregator=model_aggregator,
      loop_implementation=CLIENT_LOOP,
  )
  return Algorithm(process, one_pass)


def build_algorithm(
    model_fn: ModelFn,
    config: config_lib.TrainingConfig,
    model_aggregator: tff.aggregators.WeightedAggregationFactory,
) -> Algorithm:
  """Builds the algorithm named by `config.algorithm`.

  Raises:
    errors.UsageError: if the name is unknown. (Settings that do not go
      together never reach here: `config.check_combinations` refuses them
      when the config is constructed.)
  """
  builder = ALGORITHMS.get(config.algorithm)
  if not isinstance(model_aggregator, (
      tff.aggregators.WeightedAggregationFactory,
      tff.aggregators.UnweightedAggregationFactory)):
    raise errors.UsageError(
        f'--aggregator={config.aggregator} did not build a TFF factory')
  return builder(model_fn, config, model_aggregator)
