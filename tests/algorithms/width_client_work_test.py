"""HeteroFL's width-masked client work (Diao et al. 2021, arXiv 2010.01264):
its types, FedAvg at width 1, and a width-0.5 client against Keras training
of the extracted sub-model (with SGD, momentum, Adam and FedProx; the 2NN
and the paper CNN); with the paper's scaler, a width-0.5 client against a
hand-written scaled forward pass; a faulty client's report."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import client_reports
from tff_pipeline import config as config_lib
from tff_pipeline import faults
from tff_pipeline import models
from tff_pipeline.aggregators import build as aggregators_build
from tff_pipeline.aggregators import masked_mean
from tff_pipeline.algorithms import build
from tff_pipeline.algorithms import compensation_client_work
from tff_pipeline.algorithms import optimizers
from tff_pipeline.algorithms import width_masks
from tff_pipeline.models import width

SEED = 3
LEARNING_RATE = 0.1
BATCH_SIZE = 4
LOCAL_STEPS = 4  # More than a client's 3 batches: the client cycles.
CLIENT_SIZES = (12, 9, 10)
INPUT_SPEC = collections.OrderedDict(
    x=tf.TensorSpec((None, 784), tf.float32),
    y=tf.TensorSpec((None,), tf.int32))
SPEC = width.spec_of(models.build_2nn(SEED))


def _loss():
  return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model_fn():
  return tff.learning.models.from_keras_model(
      models.build_2nn(SEED), loss=_loss(), input_spec=INPUT_SPEC)


def _client_arrays():
  rng = np.random.default_rng(0)
  return [(rng.random((n, 784), np.float32),
           rng.integers(0, 10, n).astype(np.int32)) for n in CLIENT_SIZES]


def _batches(x, y):
  return tf.data.Dataset.from_tensor_slices(
      collections.OrderedDict(x=x, y=y)).batch(BATCH_SIZE)


def _config(tmp_path, aggregator):
  return config_lib.TrainingConfig(
      experiment_name='width', root_output_dir=str(tmp_path),
      total_rounds=1, clients_per_round=len(CLIENT_SIZES),
      aggregator=aggregator,
      client_optimizer=config_lib.OptimizerConfig(
          learning_rate=LEARNING_RATE),
      server_optimizer=config_lib.OptimizerConfig(learning_rate=1.0,
                                                  role='server'),
      seed=SEED)


@pytest.fixture(scope='module')
def client_work(tff_runtime):
  del tff_runtime
  return compensation_client_work.build_width_masked_client_work(
      _model_fn, optimizers.build_optimizer(
          config_lib.OptimizerConfig(learning_rate=LEARNING_RATE)), SPEC)


@pytest.fixture(scope='module')
def scaled_client_work(tff_runtime):
  del tff_runtime
  return compensation_client_work.build_width_masked_client_work(
      _model_fn, optimizers.build_optimizer(
          config_lib.OptimizerConfig(learning_rate=LEARNING_RATE)), SPEC,
      output_scaler=True)


@pytest.fixture(scope='module')
def heterofl(tff_runtime, tmp_path_factory):
  del tff_runtime
  return build.build_width_masked(
      _model_fn, _config(tmp_path_factory.mktemp('heterofl'), 'mean'),
      masked_mean.MaskedMeanFactory(), SPEC)


@pytest.fixture(scope='module')
def scaled_heterofl(tff_runtime, tmp_path_factory):
  del tff_runtime
  return build.build_width_masked(
      _model_fn, _config(tmp_path_factory.mktemp('scaled'), 'mean'),
      masked_mean.MaskedMeanFactory(), SPEC, output_scaler=True)


MOMENTUM = 0.9
ADAM_LEARNING_RATE = 0.01
PROXIMAL_STRENGTH = 0.5
CNN_STEPS = 3  # Over 12 examples in batches of 4: one epoch.
CNN_SPEC = width.spec_of(models.build_cnn(SEED))


def _cnn_model_fn():
  return tff.learning.models.from_keras_model(
      models.build_cnn(SEED), loss=_loss(), input_spec=INPUT_SPEC)


@pytest.fixture(scope='module')
def momentum_client_work(tff_runtime):
  del tff_runtime
  return compensation_client_work.build_width_masked_client_work(
      _model_fn, tff.learning.optimizers.build_sgdm(
          learning_rate=LEARNING_RATE, momentum=MOMENTUM), SPEC)


@pytest.fixture(scope='module')
def adam_client_work(tff_runtime):
  del tff_runtime
  return compensation_client_work.build_width_masked_client_work(
      _model_fn, tff.learning.optimizers.build_adam(
          learning_rate=ADAM_LEARNING_RATE), SPEC)


@pytest.fixture(scope='module')
def fedprox_client_work(tff_runtime):
  del tff_runtime
  return compensation_client_work.build_width_masked_client_work(
      _model_fn, tff.learning.optimizers.build_sgdm(
          learning_rate=LEARNING_RATE), SPEC,
      proximal_strength=PROXIMAL_STRENGTH)


@pytest.fixture(scope='module')
def cnn_client_work(tff_runtime):
  del tff_runtime
  return compensation_client_work.build_width_masked_client_work(
      _cnn_model_fn, tff.learning.optimizers.build_sgdm(
          learning_rate=LEARNING_RATE), CNN_SPEC)


def _one_round(algorithm, client_data):
  state = algorithm.process.initialize()
  initial = algorithm.process.get_model_weights(state).trainable
  output = algorithm.process.next(state, client_data)
  final = algorithm.process.get_model_weights(output.state).trainable
  return initial, final


def test_masks_in_tf_are_the_numpy_masks():
  """Also at 0.3, where a float product would keep one unit too many."""
  for spec in (SPEC, CNN_SPEC):
    for w in (1.0, 0.5, 0.3, 0.07):
      got = width_masks.coordinate_masks(
          spec, tf.constant(width.unit_table(spec, w)),
          [tf.float32] * len(spec.weights))
      for g, expected in zip(got, width.masks(spec, w)):
        np.testing.assert_array_equal(g.numpy(), expected)


def test_type_signature(client_work):
  signature = client_work.next.type_signature
  budget = signature.parameter[2].member['budget'].element
  assert tff.structure.name_list(budget) == [
      'local_steps', 'num_examples', 'fault',
      compensation_client_work.WIDTH_UNITS]
  assert budget[compensation_client_work.WIDTH_UNITS] == tff.TensorType(
      np.int32, [len(SPEC.weights), 2])
  result = signature.result.result
  assert result.placement is tff.CLIENTS
  update = result.member.update
  assert tff.structure.name_list(update) == [
      client_reports.MODEL_DELTA, client_reports.LOCAL_STEPS,
      client_reports.PRE_TRAINING_LOSS, client_reports.COORDINATE_MASK]
  assert update[client_reports.COORDINATE_MASK] == update[
      client_reports.MODEL_DELTA]
  assert [tuple(t.shape) for t in update[client_reports.MODEL_DELTA]] == (
      SPEC.shapes)
  assert result.member.update_weight == tff.TensorType(np.float32)


def test_every_client_at_width_1_is_fedavg(heterofl, tmp_path):
  """The issue's acceptance: with every client at width 1, one round of the
  masked mean over width-masked client work is FedAvg with `mean`."""
  clients = _client_arrays()
  fedavg = build.build_fedavg(
      _model_fn, _config(tmp_path, 'mean'),
      aggregators_build.build_aggregator(_config(tmp_path, 'mean')))
  assert heterofl.process.next.type_signature.parameter[0] == (
      heterofl.process.initialize.type_signature.result)
  start, expected = _one_round(fedavg, [
      fedavg.client_input(_batches(x, y), LOCAL_STEPS, len(x), 0)
      for x, y in clients])
  start_h, got = _one_round(heterofl, [
      heterofl.client_input(_batches(x, y), LOCAL_STEPS, len(x), 0, 1.0)
      for x, y in clients])
  for a, b in zip(start, start_h):
    np.testing.assert_array_equal(a, b)
  for a, b, s in zip(expected, got, start):
    assert np.abs(a - s).max() > 1e-4  # The round moved every weight.
    np.testing.assert_allclose(b, a, atol=1e-6)


def _sub_model_delta(global_weights, x, y, w, step, *, build=models.build_2nn,
                     spec=SPEC, local_steps=LOCAL_STEPS):
  """The delta of Keras' `build(SEED, width=w)`, loaded with
  `width.extract(global_weights, spec, w)` and trained for `local_steps`
  steps on the batches of (x, y), cycling: at step t = 1, 2, ... the weights
  become `step(t, weights, gradients, initial)` (NumPy float32 lists)."""
  sub = build(SEED, width=w)
  initial = width.extract(global_weights, spec, w)
  for variable, value in zip(sub.trainable_weights, initial):
    variable.assign(value)
  batches = list(_batches(x, y))
  loss_fn = _loss()
  for t in range(local_steps):
    batch = batches[t % len(batches)]
    with tf.GradientTape() as tape:
      loss = loss_fn(batch['y'], sub(batch['x'], training=True))
    gradients = [g.numpy() for g in tape.gradient(loss, sub.trainable_weights)]
    weights = [v.numpy() for v in sub.trainable_weights]
    for variable, value in zip(sub.trainable_weights,
                               step(t + 1, weights, gradients, initial)):
      variable.assign(value)
  return [a - v.numpy() for a, v in zip(initial, sub.trainable_weights)]


def _sgd(learning_rate=LEARNING_RATE, proximal_strength=0.0):
  """w - lr g; with mu > 0, the gradient of loss + (mu/2)||w - w0||^2."""
  lr, mu = np.float32(learning_rate), np.float32(proximal_strength)

  def step(t, weights, gradients, initial):
    del t
    if proximal_strength:
      gradients = [g + mu * (w - w0)
                   for g, w, w0 in zip(gradients, weights, initial)]
    return [w - lr * g for w, g in zip(weights, gradients)]

  return step


def _keras_sub_model_delta(global_weights, x, y, w):
  """Plain Keras SGD of `build_2nn(width=w)` from the extracted weights."""
  return _sub_model_delta(global_weights, x, y, w, _sgd())


def test_a_half_width_client_trains_its_sub_model(client_work):
  x, y = _client_arrays()[0]
  global_model = models.build_2nn(SEED)
  global_weights = [v.numpy() for v in global_model.trainable_weights]
  weights = tff.learning.models.ModelWeights(trainable=global_weights,
                                             non_trainable=[])
  data = compensation_client_work.width_client_input(SPEC)(
      _batches(x, y), LOCAL_STEPS, len(x), 0, 0.5)
  output = client_work.next(client_work.initialize(), [weights], [data])
  result, = output.result
  delta = list(result.update[client_reports.MODEL_DELTA])
  mask = list(result.update[client_reports.COORDINATE_MASK])
  expected_mask = width.masks(SPEC, 0.5)
  for d, m, e in zip(delta, mask, expected_mask):
    np.testing.assert_array_equal(m, e)
    assert np.all(d[e == 0] == 0)
  reference = _keras_sub_model_delta(global_weights, x, y, 0.5)
  for got, expected in zip(width.extract(delta, SPEC, 0.5), reference):
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(got, expected, atol=1e-5)
  assert result.update[client_reports.LOCAL_STEPS] == LOCAL_STEPS
  # The examples processed: 4 steps over batches of 4, 4, 4.
  assert result.update_weight == LOCAL_STEPS * BATCH_SIZE


def test_a_round_of_mixed_widths_is_the_masked_mean_of_sub_models(heterofl):
  """Widths 1, 0.5 and 0.25: the new global model is the old one minus the
  NumPy masked mean of the Keras sub-models' scattered deltas, weighted by
  the examples each client processed (16, 13, 14)."""
  processed = [sum(min(BATCH_SIZE, len(x) - BATCH_SIZE * (step % 3))
                   for step in range(LOCAL_STEPS)) for x, _ in _client_arrays()]
  assert processed == [16, 13, 14]
  _assert_round_is_the_masked_mean(heterofl, (1.0, 0.5, 0.25),
                                    _keras_sub_model_delta, atol=1e-6)


def _assert_round_is_the_masked_mean(algorithm, widths, sub_model_delta,
                                     atol):
  """One round of the file's three clients at `widths` moves the global
  model by minus the NumPy masked mean of `sub_model_delta`'s scattered
  deltas, weighted by the examples processed (16, 13, 14)."""
  clients = _client_arrays()
  start, got = _one_round(algorithm, [
      algorithm.client_input(_batches(x, y), LOCAL_STEPS, len(x), 0, w)
      for (x, y), w in zip(clients, widths)])
  start = [np.asarray(s) for s in start]
  deltas, masks = zip(*(
      width.scatter(sub_model_delta(start, x, y, w), SPEC, w)
      for (x, y), w in zip(clients, widths)))
  for i, s in enumerate(start):
    mean, _ = masked_mean.masked_mean([d[i] for d in deltas],
                                      [m[i] for m in masks], [16, 13, 14])
    np.testing.assert_allclose(got[i], s - mean, atol=atol)


def test_sub_models_need_the_masked_mean(tmp_path):
  """The mean would average in the zeros of clients without a coordinate."""
  config = _config(tmp_path, 'mean')
  with pytest.raises(ValueError, match='does not consume coordinate masks'):
    build.build_width_masked(_model_fn, config,
                             aggregators_build.build_aggregator(config), SPEC)


def _client_delta(process, data, global_weights):
  """One client's (model_delta, coordinate_mask) from `process`."""
  weights = tff.learning.models.ModelWeights(trainable=global_weights,
                                             non_trainable=[])
  output = process.next(process.initialize(), [weights], [data])
  result, = output.result
  return (list(result.update[client_reports.MODEL_DELTA]),
          list(result.update[client_reports.COORDINATE_MASK]))


def _scaled_sub_model_delta(global_weights, x, y, w):
  """SGD of the 2NN of width w, with its hidden layers' pre-activations
  divided by w (the paper's scaler), written by hand."""
  initial = width.extract(global_weights, SPEC, w)
  weights = [tf.Variable(v) for v in initial]
  kernel_1, bias_1, kernel_2, bias_2, kernel_3, bias_3 = weights
  batches = list(_batches(x, y))
  loss_fn = _loss()
  for step in range(LOCAL_STEPS):
    batch = batches[step % len(batches)]
    with tf.GradientTape() as tape:
      hidden = tf.nn.relu((tf.matmul(batch['x'], kernel_1) + bias_1) / w)
      hidden = tf.nn.relu((tf.matmul(hidden, kernel_2) + bias_2) / w)
      loss = loss_fn(batch['y'], tf.matmul(hidden, kernel_3) + bias_3)
    gradients = tape.gradient(loss, weights)
    for variable, gradient in zip(weights, gradients):
      variable.assign_sub(LEARNING_RATE * gradient)
  return [a - v.numpy() for a, v in zip(initial, weights)]


def test_the_scaler_sends_one_over_the_width(scaled_client_work):
  budget = scaled_client_work.next.type_signature.parameter[2].member[
      'budget'].element
  assert tff.structure.name_list(budget) == [
      'local_steps', 'num_examples', 'fault',
      compensation_client_work.WIDTH_UNITS,
      compensation_client_work.WIDTH_SCALE]
  assert budget[compensation_client_work.WIDTH_SCALE] == tff.TensorType(
      np.float32)
  x, y = _client_arrays()[0]
  for output_scaler in (False, True):
    data = compensation_client_work.width_client_input(SPEC, output_scaler)(
        _batches(x, y), LOCAL_STEPS, len(x), 0, 0.3)
    element, = data['budget']
    assert (compensation_client_work.WIDTH_SCALE in element) == output_scaler
    np.testing.assert_array_equal(
        element[compensation_client_work.WIDTH_UNITS],
        width.unit_table(SPEC, 0.3))
  assert element[compensation_client_work.WIDTH_SCALE].dtype == tf.float32
  assert element[compensation_client_work.WIDTH_SCALE].numpy() == (
      np.float32(1 / 0.3))


def test_a_half_width_client_with_the_scaler(scaled_client_work):
  """Training divides the hidden pre-activations by 0.5; the delta is that
  of the hand-written scaled sub-model, and not the unscaled one's."""
  x, y = _client_arrays()[0]
  global_weights = [v.numpy() for v in models.build_2nn(SEED).trainable_weights]
  data = compensation_client_work.width_client_input(SPEC, True)(
      _batches(x, y), LOCAL_STEPS, len(x), 0, 0.5)
  delta, mask = _client_delta(scaled_client_work, data, global_weights)
  expected_mask = width.masks(SPEC, 0.5)
  for d, m, e in zip(delta, mask, expected_mask):
    np.testing.assert_array_equal(m, e)
    assert np.all(d[e == 0] == 0)
  reference = _scaled_sub_model_delta(global_weights, x, y, 0.5)
  unscaled = _keras_sub_model_delta(global_weights, x, y, 0.5)
  for got, expected, plain in zip(width.extract(delta, SPEC, 0.5), reference,
                                  unscaled):
    assert np.abs(expected).max() > 1e-4
    assert np.abs(expected - plain).max() > 1e-3  # The scaler matters.
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_scaler_changes_nothing_at_width_1(client_work,
                                               scaled_client_work):
  x, y = _client_arrays()[1]
  global_weights = [v.numpy() for v in models.build_2nn(SEED).trainable_weights]
  plain, _ = _client_delta(
      client_work, compensation_client_work.width_client_input(SPEC)(
          _batches(x, y), LOCAL_STEPS, len(x), 0, 1.0), global_weights)
  scaled, _ = _client_delta(
      scaled_client_work, compensation_client_work.width_client_input(
          SPEC, True)(_batches(x, y), LOCAL_STEPS, len(x), 0, 1.0),
      global_weights)
  for p, q in zip(plain, scaled):
    assert np.abs(p).max() > 1e-4
    np.testing.assert_array_equal(q, p)


def test_a_round_of_mixed_widths_with_the_scaler(scaled_heterofl):
  """`build_width_masked(output_scaler=True)`: widths 1, 0.75 and 0.5 send
  1/w (4/3 is inexact in float32), and the round is the masked mean of the
  scaled sub-models, to 1e-5 as for one client (the scaler enlarges the
  updates, up to 3 here; at width 0.25 this training diverges)."""
  _assert_round_is_the_masked_mean(scaled_heterofl, (1.0, 0.75, 0.5),
                                    _scaled_sub_model_delta, atol=1e-5)


def test_the_scaler_needs_a_width_spec():
  with pytest.raises(ValueError, match='output_scaler needs a width_spec'):
    compensation_client_work.build_compensation_client_work(
        _model_fn, optimizers.build_optimizer(
            config_lib.OptimizerConfig(learning_rate=LEARNING_RATE)),
        output_scaler=True)


def _momentum(learning_rate, momentum):
  """TFF's `build_sgdm`: a = m a + g, w = w - lr a (a starts at 0)."""
  lr, m = np.float32(learning_rate), np.float32(momentum)
  accumulators = []

  def step(t, weights, gradients, initial):
    del t, initial
    if not accumulators:
      accumulators.extend(np.zeros_like(g) for g in gradients)
    accumulators[:] = [m * a + g for a, g in zip(accumulators, gradients)]
    return [w - lr * a for w, a in zip(weights, accumulators)]

  return step


def _adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
  """TFF's `build_adam` (tff/learning/optimizers/adam.py), in float32 as
  the client work runs it (its hyperparameters arrive as float32):
  a += (g - a)(1 - b1), p += (g^2 - p)(1 - b2),
  w -= lr sqrt(1 - b2^t) / (1 - b1^t) * a / (sqrt(p) + eps): epsilon is
  added to sqrt(p), outside the bias correction, which is folded into the
  learning rate."""
  lr, b1, b2, eps = (np.float32(v)
                     for v in (learning_rate, beta_1, beta_2, epsilon))
  one = np.float32(1)
  moments = []

  def step(t, weights, gradients, initial):
    del initial
    if not moments:
      moments.extend((np.zeros_like(g), np.zeros_like(g)) for g in gradients)
    moments[:] = [(a + (g - a) * (one - b1),
                   p + (np.square(g) - p) * (one - b2))
                  for (a, p), g in zip(moments, gradients)]
    t = np.float32(t)
    normalized_lr = lr * np.sqrt(one - b2**t) / (one - b1**t)
    assert normalized_lr.dtype == np.float32
    return [w - normalized_lr * a / (np.sqrt(p) + eps)
            for w, (a, p) in zip(weights, moments)]

  return step


def _check_half_width_delta(process, reference_step, atol, *,
                            build=models.build_2nn, spec=SPEC,
                            local_steps=LOCAL_STEPS, x=None, y=None):
  """Runs one width-0.5 client through `process` and checks its report:
  the mask is `width.masks(spec, 0.5)`, the delta is exactly 0 outside it,
  and inside it equals the Keras sub-model trained with `reference_step`.

  The client work zeroes the delta outside the mask at the end, so the
  zeros alone do not show that the dropped weights stayed 0 in training:
  the match inside does (a dropped weight that moved would change the
  sub-model's forward pass, hence the held coordinates' gradients).

  Returns:
    (the reported delta cut to the sub-model, the reference delta).
  """
  if x is None:
    x, y = _client_arrays()[0]
  global_weights = [v.numpy() for v in build(SEED).trainable_weights]
  data = compensation_client_work.width_client_input(spec)(
      _batches(x, y), local_steps, len(x), 0, 0.5)
  delta, mask = _client_delta(process, data, global_weights)
  for d, m, e in zip(delta, mask, width.masks(spec, 0.5)):
    np.testing.assert_array_equal(m, e)
    assert np.all(d[e == 0] == 0)
  got = width.extract(delta, spec, 0.5)
  reference = _sub_model_delta(global_weights, x, y, 0.5, reference_step,
                               build=build, spec=spec,
                               local_steps=local_steps)
  for g, expected in zip(got, reference):
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(g, expected, atol=atol)
  return got, reference


def _max_difference(a, b):
  return max(np.abs(p - q).max() for p, q in zip(a, b))


def _plain_half_width_delta():
  """`_keras_sub_model_delta` of client 0 at width 0.5 (plain SGD)."""
  x, y = _client_arrays()[0]
  return _keras_sub_model_delta(
      [v.numpy() for v in models.build_2nn(SEED).trainable_weights], x, y, 0.5)


def test_a_half_width_client_with_momentum(momentum_client_work):
  """`build_sgdm(momentum=0.9)`: the masked gradient leaves the dropped
  coordinates' velocity at 0, so they stay 0; inside, hand-written momentum
  SGD of the sub-model, to 1e-5."""
  got, _ = _check_half_width_delta(momentum_client_work,
                                   _momentum(LEARNING_RATE, MOMENTUM), 1e-5)
  assert _max_difference(got, _plain_half_width_delta()) > 1e-3


def test_a_half_width_client_with_adam(adam_client_work):
  """`build_adam(0.01)`: a zero gradient from zero moments steps by
  0 / (0 + eps) = 0, so the dropped coordinates stay 0; inside,
  hand-written Adam of the sub-model, to 1e-4, and all but 0.1% of the
  coordinates to 1e-5.

  Why looser than SGD's 1e-5: Adam's step is about lr sign(g) whatever
  |g| (until |g| nears eps / sqrt(1 - b2) ~ 3e-6), so near g = 0 the first
  step is 0.01 * sqrt(0.001) / 0.1 * 0.1 / eps ~ 3e3 times the gradient,
  and a gradient that cancels to ~1e-6 carries float32 rounding of ~1e-9
  that differs between the full-shape model (sums over zeroed units) and
  the sub-model. Measured (the same on every run): 3 of the sub-model's
  89,610 coordinates off by more than 1e-5, at most 3.6e-5 (one has the
  gradient 1.03e-6 in both, relative difference 1e-3). 1e-4
  still rejects the textbook form of Adam (bias-corrected moments, eps
  added to sqrt(p / (1 - b2^t))): it differs from TFF's by up to 0.036
  here, on 28,310 coordinates."""
  got, reference = _check_half_width_delta(
      adam_client_work, _adam(ADAM_LEARNING_RATE), 1e-4)
  off = sum(int(np.sum(np.abs(g - r) > 1e-5))
            for g, r in zip(got, reference))
  assert off <= 1e-3 * width.parameter_count(SPEC, 0.5)
  assert _max_difference(got, _plain_half_width_delta()) > 1e-3


def test_a_half_width_client_with_fedprox(fedprox_client_work):
  """FedProx, mu = 0.5: SGD of the sub-model on its loss plus
  (mu/2)||w - w0||^2 over its own weights (gradient + mu (w - w0)), to
  1e-5. Outside the mask the proximal gradient mu (0 - w0) is not 0 (w0 is
  the global weight there), so this also checks that it is masked."""
  got, _ = _check_half_width_delta(
      fedprox_client_work, _sgd(proximal_strength=PROXIMAL_STRENGTH), 1e-5)
  assert _max_difference(got, _plain_half_width_delta()) > 1e-3


def test_the_cnn_at_half_width_trains_its_sub_model(cnn_client_work):
  """The paper CNN, one client of 12 random images, 3 steps of batches of
  4: inside the mask, Keras SGD of `build_cnn(width=0.5)` from the
  extracted weights, to 1e-5. The dense kernel after `Flatten` keeps 32 of
  every 64 rows (channel fastest): a wrong row order would train other
  rows than the sub-model's."""
  rng = np.random.default_rng(1)
  x = rng.random((12, 784), np.float32)
  y = rng.integers(0, 10, 12).astype(np.int32)
  got, _ = _check_half_width_delta(cnn_client_work, _sgd(), 1e-5,
                                   build=models.build_cnn, spec=CNN_SPEC,
                                   local_steps=CNN_STEPS, x=x, y=y)
  # The sub-model's hidden dense kernel (7 x 7 positions of 32 channels,
  # 256 units) moved at every position, so the comparison covers the kept
  # rows of every block of 64.
  dense_kernel = got[4].reshape(49, 32, 256)
  assert np.all(np.abs(dense_kernel).max(axis=(1, 2)) > 1e-4)


def test_a_faulty_half_width_client_keeps_its_mask(client_work):
  """`faults.NAN`: the whole delta is NaN (inside and outside the mask, as
  a faulty client sends it); the mask is still the width's, and the weight
  the examples processed (the masked mean drops the client for its NaN)."""
  x, y = _client_arrays()[0]
  global_weights = [v.numpy() for v in models.build_2nn(SEED).trainable_weights]
  data = compensation_client_work.width_client_input(SPEC)(
      _batches(x, y), LOCAL_STEPS, len(x), faults.NAN, 0.5)
  weights = tff.learning.models.ModelWeights(trainable=global_weights,
                                             non_trainable=[])
  output = client_work.next(client_work.initialize(), [weights], [data])
  result, = output.result
  delta = list(result.update[client_reports.MODEL_DELTA])
  mask = list(result.update[client_reports.COORDINATE_MASK])
  for d, m, e in zip(delta, mask, width.masks(SPEC, 0.5)):
    assert np.all(np.isnan(d))
    np.testing.assert_array_equal(m, e)
  assert result.update_weight == LOCAL_STEPS * BATCH_SIZE
