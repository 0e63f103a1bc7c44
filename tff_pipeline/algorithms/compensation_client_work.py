"""Client work that trains on a local-step budget and reports tau_i and L_i.

The compensation-aware aggregator (`aggregators/compensation.py`) needs two
facts from each client besides its model delta:

  * tau_i, the number of local steps it actually ran: the FedNova
    normalisation of Wang et al. 2020 (arXiv 2007.07481) divides the delta by
    it;
  * L_i, the loss of the incoming global model on the client's data, measured
    before local training: the loss-aware reweighting of q-FFL (Li et al.
    2020, "Fair Resource Allocation in Federated Learning", arXiv
    1905.10497) raises weights of clients on which the global model does
    poorly.

A `tff.learning.templates.ClientWorkProcess` may return any update structure
(composers only check that the aggregator accepts it), so this client work
returns the update `{model_delta, local_steps, pre_training_loss}` with weight
n_i, the client's number of examples (or, for FedProx with other aggregators,
the number of examples processed, as TFF weights FedAvg). Everything else follows
`tff.learning.templates.build_model_delta_client_work` (FedAvg, McMahan et
al. 2017), including FedProx's proximal term (Li et al. 2020, arXiv
1812.06127) when `proximal_strength > 0`.

Client data type: `<batches=B*, budget=<local_steps=int32,
num_examples=int32, fault=int32>*>`: one epoch of the client's batches, and a
one-element sequence holding the step budget, the client's number of examples
n_i and a fault code (`tff_pipeline.faults`; 0 is an honest client). The
client cycles through its batches until the budget is spent. A faulty client
corrupts its update after its own finiteness check, as a buggy or malicious
client would send it. (n_i is passed
rather than counted, because counting would need an extra pass over the
shuffled data, which would change the shuffle order of training and break the
exact equivalence with TFF's FedAvg.)

HeteroFL (Diao, Ding and Tarokh 2021, ICLR 2021, arXiv 2010.01264):
`build_width_masked_client_work` trains, on a client of width w, the
sub-model made of the first ceil(w * units) units of every hidden layer
(`models/width.py`) inside the full-shape model. The budget then also holds
`width_units`, the client's `width.unit_table(spec, w)`, so one computation
serves every width. Before training, every weight outside the sub-model is
set to 0, and its gradient is masked to 0 at every step: a dropped unit's
kernel column and bias are 0, and the next layer's rows that read it are 0,
so whatever the activation, the forward pass is the sub-model's, and the
dropped coordinates stay 0 under any optimizer whose step is 0 for a 0
gradient (SGD with or without momentum, Adam, ...). The report's
`model_delta` is the sub-model's delta, scattered to the full shape (0
outside), and `coordinate_mask` (of the delta's type) is
`width.masks(spec, w)`: what the masked mean (`aggregators/masked_mean.py`)
averages over. The pre-training loss is the sub-model's.

HeteroFL's "Scaler" (Diao et al. 2021, sec. 3), behind `output_scaler`
(off by default): during local training only, the paper divides the
output of every hidden layer (its pre-activation W h + b) by the width
rate w; the pre-training loss pass is unscaled (a sub-model is evaluated
with the scaler folded in: `width.scaled`). The
Keras model is not changed: the client work trains the exact
reparameterisation. With s = 1/w for the kernels and biases of hidden
layers (`WeightCut.cut_out`) and s = 1 for the output layer, the scaled
network with weights W is the plain network with weights V = s W, and
dL/dW = s dL/dV. Each step assigns V = s W to the model's variables, takes
the gradient g_V of the plain forward pass, assigns W back and steps W
with g_W = s g_V (then FedProx's term and the masks, as without the
scaler). The delta is still that of W. The budget then also holds
`width_scale`, the float32 1/w (computed in float64 from the client's
width). At width 1, s = 1 and the numbers are those without the scaler.

Type signature of `next`:
  (<S@SERVER, M@CLIENTS, <batches=B*, budget=<...>*>@CLIENTS> ->
   <state=S@SERVER,
    result=<update=<model_delta=T, local_steps=float32,
                    pre_training_loss=float32[, coordinate_mask=T]>,
            update_weight=float32>@CLIENTS,
    measurements=<train=...>@SERVER>)
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import _structure
from tff_pipeline import client_reports
from tff_pipeline import faults
from tff_pipeline.algorithms import width_masks
from tff_pipeline.models import width as width_lib

# The update this client work reports (see `tff_pipeline.client_reports`).
MODEL_DELTA = client_reports.MODEL_DELTA
LOCAL_STEPS = client_reports.LOCAL_STEPS
PRE_TRAINING_LOSS = client_reports.PRE_TRAINING_LOSS
COORDINATE_MASK = client_reports.COORDINATE_MASK
WIDTH_UNITS = 'width_units'
WIDTH_SCALE = 'width_scale'


def client_input(batches: tf.data.Dataset, local_steps: int,
                 num_examples: int, fault: int,
                 width_units: np.ndarray | None = None,
                 width_scale: float | None = None,
                 ) -> collections.OrderedDict:
  """The client data this client work expects.

  Args:
    batches: One epoch of the client's batches.
    local_steps: The client's step budget.
    num_examples: n_i.
    fault: A `tff_pipeline.faults` code.
    width_units: For the width-masked client work only: the client's
      `width.unit_table(spec, w)`.
    width_scale: For the width-masked client work with `output_scaler`
      only: 1/w, sent as float32.
  """
  budget = collections.OrderedDict(local_steps=np.int32(local_steps),
                                   num_examples=np.int32(num_examples),
                                   fault=np.int32(fault))
  if width_units is not None:
    budget[WIDTH_UNITS] = np.asarray(width_units, np.int32)
  if width_scale is not None:
    budget[WIDTH_SCALE] = np.float32(width_scale)
  return collections.OrderedDict(
      batches=batches, budget=tf.data.Dataset.from_tensors(budget))


def width_client_input(spec: width_lib.WidthSpec, output_scaler: bool = False):
  """`client_input` for the width-masked client work of models of `spec`.

  Args:
    spec: The global model's `width.WidthSpec`.
    output_scaler: Whether the client work was built with `output_scaler`
      (then the data also holds `width_scale`, 1/width).

  Returns:
    A function (batches, local_steps, num_examples, fault, width=1.0) ->
    client data, which sends `width.unit_table(spec, width)` (and, with
    `output_scaler`, 1/width computed in float64, sent as float32). With
    the default width it takes what every other `client_input` takes.
  """

  def client_input_of_width(batches: tf.data.Dataset, local_steps: int,
                            num_examples: int, fault: int,
                            width: float = width_lib.FULL_WIDTH,
                            ) -> collections.OrderedDict:
    units = width_lib.unit_table(spec, width)
    scale = None
    if output_scaler:
      scale = np.float64(1.0) / np.float64(width_lib.check_width(width))
    return client_input(batches, local_steps, num_examples, fault,
                        width_units=units, width_scale=scale)

  return client_input_of_width


def _corrupt(delta, fault: tf.Tensor):
  """Applies a `tff_pipeline.faults` code to a model delta."""

  def corrupt(d):
    nan = tf.fill(tf.shape(d), tf.constant(np.nan, d.dtype))
    inf = tf.fill(tf.shape(d), tf.constant(np.inf, d.dtype))
    d = tf.where(tf.equal(fault, faults.NAN), nan, d)
    d = tf.where(tf.equal(fault, faults.INF), inf, d)
    d = tf.where(tf.equal(fault, faults.SCALE), d * faults.SCALE_FACTOR, d)
    return tf.where(tf.equal(fault, faults.SIGN_FLIP), -d, d)

  return tf.nest.map_structure(corrupt, delta)


def _held(values, masks):
  """`values` where the mask is positive, exactly 0 elsewhere (even NaN)."""
  if masks is None:
    return values
  held = [tf.where(m > 0, v, tf.zeros_like(v))
          for v, m in zip(tf.nest.flatten(values), masks)]
  return tf.nest.pack_sequence_as(values, held)


def iterate(dataset: tf.data.Dataset, initial_state, reduce_fn):
  """`dataset.reduce(initial_state, reduce_fn)` as an iterator loop.

  Inside a `tf.function`, AutoGraph turns the loop into a `tf.while_loop`
  over the dataset's iterator, as TFF's own client work does with
  `LoopImplementation.DATASET_ITERATOR` (`algorithms.build.CLIENT_LOOP`, the
  loop of every TFF-built algorithm here).

  Why not `Dataset.reduce`: TFF's worker runs graphs with Grappler off; a
  `reduce` body is a tf.data function it never inlines, so the gradient of
  every input of the model's `forward_pass` `tf.function` is computed,
  including a first-layer convolution gradient with respect to the images
  that nothing reads. The iterator loop is lowered into the session's graph,
  where that dead branch is pruned: on the paper CNN this cut the worker's
  CPU per round by a third (benchmarks/README.md).
  """
  state = initial_state
  for element in iter(dataset):
    state = reduce_fn(state, element)
  return state


def _build_client_update(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    proximal_strength: float,
    measure_loss: bool,
    weighting: str,
    width_spec: width_lib.WidthSpec | None,
    output_scaler: bool = False,
):
  """The local computation: loss pass, budgeted training, delta.

  With `output_scaler` (and a `width_spec`), training steps the weights W
  of the network whose hidden layers' outputs are divided by w, through the
  plain model with weights s W (see the module docstring).
  """
  model = model_fn()

  @tf.function
  def client_update(optimizer, optimizer_hparams, initial_weights, batches,
                    budget_dataset):
    model_weights = tff.learning.models.ModelWeights.from_model(model)
    tf.nest.map_structure(lambda v, t: v.assign(t), model_weights,
                          initial_weights)
    budget, num_examples, fault = iterate(
        budget_dataset,
        (tf.constant(0, tf.int32), tf.constant(0, tf.int32),
         tf.constant(0, tf.int32)),
        lambda total, x: (total[0] + x['local_steps'],
                          total[1] + x['num_examples'],
                          total[2] + x['fault']))
    if width_spec is None:
      masks = None
    else:
      table = iterate(
          budget_dataset,
          tf.zeros(width_masks.table_spec(width_spec).shape, tf.int32),
          lambda total, x: total + x[WIDTH_UNITS])
      masks = width_masks.coordinate_masks(
          width_spec, table,
          [v.dtype for v in tf.nest.flatten(model_weights.trainable)])
      # Train the sub-model: every weight outside it starts at 0.
      tf.nest.map_structure(lambda v, t: v.assign(t), model_weights.trainable,
                            _held(model_weights.trainable, masks))
    if output_scaler:
      width_scale = iterate(budget_dataset, tf.constant(0.0, tf.float32),
                            lambda total, x: total + x[WIDTH_SCALE])
      # Per weight, s = 1/w for hidden layers' weights, None for s = 1.
      scales = [width_scale if cut.cut_out else None
                for cut in width_spec.weights]
    else:
      scales = None

    if measure_loss:
      # Loss of the incoming global model on the client's data.
      def loss_pass(state, batch):
        loss_sum, count = state
        output = model.forward_pass(batch, training=False)
        n = tf.cast(output.num_examples, tf.float64)
        return loss_sum + tf.cast(output.loss, tf.float64) * n, count + n

      loss_sum, count = iterate(
          batches,
          (tf.constant(0.0, tf.float64), tf.constant(0.0, tf.float64)),
          loss_pass)
      pre_training_loss = tf.cast(tf.math.divide_no_nan(loss_sum, count),
                                  tf.float32)
      # The loss pass must not count towards the training metrics.
      model.reset_metrics()
    else:
      pre_training_loss = tf.constant(0.0)

    def scaled_gradients(batch):
      """The forward pass and gradients w.r.t. W of the scaled network."""
      variables = tf.nest.flatten(model_weights.trainable)
      saved = [v.read_value() if s is not None else None
               for v, s in zip(variables, scales)]
      for v, w, s in zip(variables, saved, scales):
        if s is not None:
          v.assign(tf.cast(s, w.dtype) * w)  # V = s W.
      with tf.GradientTape() as tape:
        output = model.forward_pass(batch, training=True)
      gradients = tape.gradient(output.loss, model_weights.trainable)
      for v, w, s in zip(variables, saved, scales):
        if s is not None:
          v.assign(w)  # Back to W.
      gradients = [g if s is None else tf.cast(s, g.dtype) * g  # g_W = s g_V.
                   for g, s in zip(tf.nest.flatten(gradients), scales)]
      return output, tf.nest.pack_sequence_as(model_weights.trainable,
                                              gradients)

    def train_step(state, batch):
      steps, processed, optimizer_state = state
      if scales is None:
        with tf.GradientTape() as tape:
          output = model.forward_pass(batch, training=True)
        gradients = tape.gradient(output.loss, model_weights.trainable)
      else:
        output, gradients = scaled_gradients(batch)
      # FedProx: the gradient of (mu/2)||w - w_t||^2 is mu (w - w_t). (TFF
      # 0.87's proximal client work adds mu (w_t - w), the wrong sign.)
      if proximal_strength > 0:
        gradients = tf.nest.map_structure(
            lambda g, w, w0: g + proximal_strength * (w - w0),
            gradients, model_weights.trainable, initial_weights.trainable)
      gradients = _held(gradients, masks)
      optimizer_state, updated = optimizer.next(
          optimizer_state,
          tuple(tf.nest.flatten(model_weights.trainable)),
          tuple(tf.nest.flatten(gradients)),
      )
      updated = tf.nest.pack_sequence_as(model_weights.trainable, updated)
      tf.nest.map_structure(lambda v, t: v.assign(t), model_weights.trainable,
                            updated)
      return (steps + 1, processed + tf.cast(output.num_examples, tf.int32),
              optimizer_state)

    specs = tuple(tf.TensorSpec(v.shape, v.dtype)
                  for v in tf.nest.flatten(model_weights.trainable))
    optimizer_state = optimizer.set_hparams(optimizer.initialize(specs),
                                            optimizer_hparams)
    # Training iterates the batches after the loss pass has: each new
    # iterator of the shuffled epoch (`reshuffle_each_iteration=True`) draws
    # the next seed of the dataset's seed generator, and without this
    # dependency the two iterators were created in either order, so a run
    # with loss-aware reweighting trained on either shuffle (not
    # reproducible from --seed).
    with tf.control_dependencies([pre_training_loss]):
      steps, processed, _ = iterate(
          batches.repeat().take(tf.cast(budget, tf.int64)),
          (tf.constant(0, tf.int32), tf.constant(0, tf.int32),
           optimizer_state),
          train_step)

    delta = _held(tf.nest.map_structure(tf.subtract,
                                        initial_weights.trainable,
                                        model_weights.trainable), masks)
    finite = _structure.all_finite(delta)
    delta = tf.nest.map_structure(
        lambda d: tf.where(finite, d, tf.zeros_like(d)), delta)
    if weighting == client_reports.WEIGHT_BY_DATA_SIZE:
      weight = tf.cast(num_examples, tf.float32)
    else:
      weight = tf.cast(processed, tf.float32)
    weight = tf.where(finite, weight, 0.0)
    if not finite:
      model.reset_metrics()
    delta = _corrupt(delta, fault)
    update = collections.OrderedDict([
        (MODEL_DELTA, delta),
        (LOCAL_STEPS, tf.cast(steps, tf.float32)),
        (PRE_TRAINING_LOSS, pre_training_loss),
    ])
    if masks is not None:
      update[COORDINATE_MASK] = tf.nest.pack_sequence_as(delta, masks)
    return (tff.learning.templates.ClientResult(update=update,
                                                update_weight=weight),
            model.report_local_unfinalized_metrics())

  return client_update


def build_compensation_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    optimizer: tff.learning.optimizers.Optimizer,
    *,
    proximal_strength: float = 0.0,
    measure_loss: bool = True,
    weighting: str = client_reports.WEIGHT_BY_DATA_SIZE,
    width_spec: width_lib.WidthSpec | None = None,
    output_scaler: bool = False,
) -> tff.learning.templates.ClientWorkProcess:
  """Builds the budgeted, self-reporting client work.

  Args:
    model_fn: No-argument function returning a fresh
      `tff.learning.models.VariableModel`.
    optimizer: The client optimizer.
    proximal_strength: FedProx mu; 0 gives FedAvg's local training.
    measure_loss: Whether to run the pre-training loss pass (needed only for
      loss-aware reweighting; without it `pre_training_loss` is 0).
    weighting: The update weight, one of `client_reports.WEIGHTINGS`:
      `WEIGHT_BY_DATA_SIZE` (n_i, what the compensation needs) or
      `WEIGHT_BY_EXAMPLES_PROCESSED` (the examples
      seen in training, TFF's `ClientWeighting.NUM_EXAMPLES` convention).
    width_spec: The model's `width.WidthSpec`, to train each client's
      width-scaled sub-model (see `build_width_masked_client_work`); None
      trains the whole model.
    output_scaler: HeteroFL's scaler: during training, hidden layers'
      outputs are divided by the client's width (see the module
      docstring). Needs `width_spec`.

  Returns:
    A `ClientWorkProcess` whose state is the optimizer's hyperparameters.

  Raises:
    ValueError: on a negative `proximal_strength`, an unknown `weighting`,
      a `width_spec` whose shapes are not the model's, or `output_scaler`
      without `width_spec`.
  """
  if output_scaler and width_spec is None:
    raise ValueError('output_scaler needs a width_spec: it divides hidden '
                     'outputs by the client\'s width')
  if proximal_strength < 0:
    raise ValueError(f'proximal_strength {proximal_strength} must be >= 0')
  if weighting not in client_reports.WEIGHTINGS:
    raise ValueError(f'unknown weighting {weighting!r}')
  with tf.Graph().as_default():
    model = model_fn()
    metrics_aggregation_fn = tff.learning.metrics.sum_then_finalize(
        model.metric_finalizers())
    shapes = [tuple(v.shape) for v in model.trainable_variables]
  budget_fields = [('local_steps', np.int32), ('num_examples', np.int32),
                   ('fault', np.int32)]
  if width_spec is not None:
    if shapes != width_spec.shapes:
      raise ValueError(f'width_spec has shapes {width_spec.shapes}; the '
                       f'model\'s trainable weights are {shapes}')
    budget_fields.append((WIDTH_UNITS, tff.TensorType(
        np.int32, width_masks.table_spec(width_spec).shape)))
    if output_scaler:
      budget_fields.append((WIDTH_SCALE, np.float32))
  element_type = tff.types.tensorflow_to_type(model.input_spec)
  data_type = tff.StructType([
      ('batches', tff.SequenceType(element_type)),
      ('budget', tff.SequenceType(tff.StructWithPythonType(
          budget_fields, collections.OrderedDict))),
  ])
  weights_type = tff.learning.models.weights_type_from_model(model)
  initial_hparams = optimizer.get_hparams(
      optimizer.initialize(tf.TensorSpec((), tf.float32)))

  @tff.federated_computation
  def init_fn():
    return tff.federated_value(initial_hparams, tff.SERVER)

  state_type = init_fn.type_signature.result.member

  @tff.tensorflow.computation(state_type, weights_type, data_type)
  def client_update_computation(hparams, initial_weights, data):
    client_update = _build_client_update(model_fn, proximal_strength,
                                         measure_loss, weighting, width_spec,
                                         output_scaler)
    return client_update(optimizer, hparams, initial_weights,
                         data['batches'], data['budget'])

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.FederatedType(weights_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS),
  )
  def next_fn(state, weights, client_data):
    hparams_at_clients = tff.federated_broadcast(state)
    client_result, model_outputs = tff.federated_map(
        client_update_computation, (hparams_at_clients, weights, client_data))
    train_metrics = metrics_aggregation_fn(model_outputs)
    measurements = tff.federated_zip(
        collections.OrderedDict(train=train_metrics))
    return tff.templates.MeasuredProcessOutput(state, client_result,
                                               measurements)

  @tff.tensorflow.computation(state_type)
  def get_hparams_fn(state):
    return state

  @tff.tensorflow.computation(state_type, state_type)
  def set_hparams_fn(state, hparams):
    del state
    return hparams

  return tff.learning.templates.ClientWorkProcess(
      init_fn, next_fn, get_hparams_fn=get_hparams_fn,
      set_hparams_fn=set_hparams_fn)


def build_width_masked_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    optimizer: tff.learning.optimizers.Optimizer,
    spec: width_lib.WidthSpec,
    *,
    proximal_strength: float = 0.0,
    measure_loss: bool = False,
    weighting: str = client_reports.WEIGHT_BY_EXAMPLES_PROCESSED,
    output_scaler: bool = False,
) -> tff.learning.templates.ClientWorkProcess:
  """Client work of HeteroFL (Diao et al. 2021, arXiv 2010.01264, sec. 3).

  Each client trains the sub-model of its width inside the full-shape model
  (see the module docstring) and reports `model_delta` (0 outside its
  sub-model) and `coordinate_mask` beside the usual report, what
  `aggregators.masked_mean.MaskedMeanFactory` consumes. The width comes in
  the client's data: `client_input(..., width_units=width.unit_table(spec,
  w))`, or `width_client_input(spec, output_scaler)(..., w)`.

  With `output_scaler`, the paper's "Scaler" (sec. 3): during local
  training only, every hidden layer's output (before its activation) is
  divided by w, so that a narrow sub-model's hidden outputs keep the scale
  of the full model's. It is trained as the exact reparameterisation of
  the module docstring (the Keras model is unchanged); the data then also
  holds `width_scale` = 1/w (`client_input(..., width_scale=1 / w)`). The
  pre-training loss is unscaled, as the paper's evaluation. At width 1
  nothing changes.

  Args:
    model_fn: No-argument function returning a fresh
      `tff.learning.models.VariableModel` of the global (width 1) model.
    optimizer: The client optimizer.
    spec: `width.spec_of` the model's Keras model.
    proximal_strength: FedProx mu; 0 gives FedAvg's local training.
    measure_loss: Whether to measure the pre-training loss (of the
      sub-model).
    weighting: The update weight, one of `client_reports.WEIGHTINGS`; by
      default the examples processed, the masked mean's default.
    output_scaler: Whether to apply HeteroFL's scaler in training (off by
      default).

  Returns:
    A `ClientWorkProcess` whose state is the optimizer's hyperparameters.
  """
  return build_compensation_client_work(
      model_fn, optimizer, proximal_strength=proximal_strength,
      measure_loss=measure_loss, weighting=weighting, width_spec=spec,
      output_scaler=output_scaler)
