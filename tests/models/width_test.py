"""Width-scaled sub-models (HeteroFL): cuts, masks and Keras sub-models.

Checked against NumPy on the real builders: extract -> scatter puts every
value back in place, width 1 is the identity, the Keras sub-model has the
extracted shapes, and its forward pass equals a NumPy forward pass of the
global model with the dropped hidden units zeroed (which is what pins down
the order of the features after `Flatten`).
"""

import math

import numpy as np
import pytest
from numpy.lib import stride_tricks

from tff_pipeline import models
from tff_pipeline.models import width

BUILDERS = {'cnn': models.build_cnn, '2nn': models.build_2nn}
WIDTHS = [0.5, 0.3, 0.0625]


@pytest.fixture(scope='module')
def global_models():
  return {name: build(7) for name, build in BUILDERS.items()}


@pytest.fixture(scope='module')
def specs(global_models):  # pylint: disable=redefined-outer-name
  return {name: width.spec_of(model) for name, model in global_models.items()}


# ---- Units and widths. ----

@pytest.mark.parametrize('units, w, expected', [
    (32, 0.5, 16), (512, 0.0625, 32), (200, 1.0, 200),
    (10, 0.3, 3),      # not 4: 0.3 * 10 is 3.0000000000000004 in binary
    (10, 0.31, 4), (64, 1e-9, 1)])
def test_kept_units_is_the_ceiling_of_the_decimal_product(units, w, expected):
  assert width.kept_units(units, w) == expected


@pytest.mark.parametrize('bad', [0, 0.0, -0.5, 1.0000001, 2, math.nan,
                                 math.inf, -math.inf, True, '0.5', None])
def test_widths_outside_zero_one_are_refused_in_one_line(bad, specs):
  with pytest.raises(ValueError, match=r'^width must be a finite number in '
                     r'\(0, 1\], got .*$') as raised:
    width.parameter_count(specs['2nn'], bad)
  assert '\n' not in str(raised.value)
  with pytest.raises(ValueError, match='width must be'):
    models.build_2nn(0, width=bad)


def test_the_full_width_builders_are_unchanged():
  for build in (*BUILDERS.values(), models.build_linear):
    default, explicit = build(3), build(3, width=1.0)
    for a, b in zip(default.get_weights(), explicit.get_weights(),
                    strict=True):
      np.testing.assert_array_equal(a, b)


# ---- The spec of the paper models. ----

def test_the_cnn_spec_cuts_hidden_units_but_not_inputs_or_outputs(specs):
  cuts = specs['cnn'].weights
  assert [c.shape for c in cuts] == [
      (5, 5, 1, 32), (32,), (5, 5, 32, 64), (64,), (3136, 512), (512,),
      (512, 10), (10,)]
  assert width.sub_shapes(specs['cnn'], 0.5) == [
      (5, 5, 1, 16), (16,), (5, 5, 16, 32), (32,), (49 * 32, 256), (256,),
      (256, 10), (10,)]
  assert width.sub_shapes(specs['2nn'], 0.3) == [
      (784, 60), (60,), (60, 60), (60,), (60, 10), (10,)]


def test_the_dense_layer_after_flatten_keeps_k_of_every_c_rows(specs):
  # Flatten numbers the 7 x 7 x 64 features (row, col, channel), channel
  # fastest: a sub-model with 32 channels keeps rows p * 64 + [0, 32).
  rows = specs['cnn'].indices(0.5)[4][0]
  expected = [p * 64 + c for p in range(49) for c in range(32)]
  np.testing.assert_array_equal(rows, expected)


@pytest.mark.parametrize('name', sorted(BUILDERS))
@pytest.mark.parametrize('w', [1.0, *WIDTHS])
def test_parameter_count_is_the_keras_sub_model_size(specs, name, w):
  sub_model = BUILDERS[name](0, width=w)
  assert width.parameter_count(specs[name], w) == models.count_parameters(
      sub_model)
  assert [tuple(v.shape) for v in sub_model.trainable_weights] == (
      width.sub_shapes(specs[name], w))


def test_paper_model_sizes_at_full_width(specs):
  assert width.parameter_count(specs['cnn'], 1.0) == 1_663_370
  assert width.parameter_count(specs['2nn'], 1.0) == 199_210


# ---- extract and scatter against NumPy. ----

@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_width_one_is_the_identity_with_an_all_ones_mask(global_models, specs,
                                                         name):
  weights = global_models[name].get_weights()
  sub = width.extract(weights, specs[name], 1.0)
  full, mask = width.scatter(sub, specs[name], 1.0)
  for w, s, f, m in zip(weights, sub, full, mask, strict=True):
    np.testing.assert_array_equal(s, w)
    np.testing.assert_array_equal(f, w)
    assert m.dtype == w.dtype and np.all(m == 1.0)


@pytest.mark.parametrize('name', sorted(BUILDERS))
@pytest.mark.parametrize('w', WIDTHS)
def test_extract_then_scatter_puts_every_value_back_in_place(
    global_models, specs, name, w):
  weights = global_models[name].get_weights()
  spec = specs[name]
  sub = width.extract(weights, spec, w)
  full, mask = width.scatter(sub, spec, w)
  assert [s.shape for s in sub] == width.sub_shapes(spec, w)
  held = 0
  for g, s, f, m in zip(weights, sub, full, mask, strict=True):
    assert f.shape == m.shape == g.shape and f.dtype == m.dtype == g.dtype
    assert set(np.unique(m)) <= {0.0, 1.0}
    # In place where the mask is 1, zero elsewhere.
    np.testing.assert_array_equal(f[m == 1], g[m == 1])
    np.testing.assert_array_equal(f[m == 0], 0.0)
    # The sub-model is the leading corner of every axis but the rows after
    # Flatten, which `test_the_dense_layer_after_flatten...` checks.
    np.testing.assert_array_equal(np.sort(s.ravel()), np.sort(g[m == 1]))
    held += int(m.sum())
  assert held == width.parameter_count(spec, w)
  for s, again in zip(sub, width.extract(full, spec, w), strict=True):
    np.testing.assert_array_equal(s, again)


def test_masks_of_smaller_widths_are_nested(specs):
  narrow, wide = (width.masks(specs['cnn'], w) for w in (0.25, 0.5))
  for n, w in zip(narrow, wide, strict=True):
    assert np.all(n <= w)
  assert sum(n.sum() for n in narrow) < sum(w.sum() for w in wide)


def test_shapes_that_do_not_fit_the_spec_are_refused(global_models, specs):
  weights = global_models['2nn'].get_weights()
  with pytest.raises(ValueError, match='global weights have shapes'):
    width.extract(weights[:-1], specs['2nn'], 0.5)
  with pytest.raises(ValueError, match='sub-model weights have shapes'):
    width.scatter(weights, specs['2nn'], 0.5)


# ---- The Keras sub-model computes what the global model does without the
# ---- dropped units.

def _conv_same(x, kernel, bias):
  """Stride-1 'same' convolution of NHWC `x` with an HWIO kernel."""
  pad = kernel.shape[0] // 2
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  windows = stride_tricks.sliding_window_view(
      padded, kernel.shape[:2], axis=(1, 2))  # [B, H, W, C, kh, kw]
  return np.einsum('bhwcij,ijco->bhwo', windows, kernel, optimize=True) + bias


def _max_pool_2x2(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _relu_first(x, keep):
  """ReLU, then every unit (last axis) from `keep` on set to zero."""
  x = np.maximum(x, 0.0)
  x[..., keep:] = 0.0
  return x


def _numpy_cnn(weights, x, w):
  k1, b1, k2, b2, k3, b3, k4, b4 = [np.float64(v) for v in weights]
  h = x.reshape(-1, 28, 28, 1)
  h = _max_pool_2x2(_relu_first(_conv_same(h, k1, b1),
                                width.kept_units(32, w)))
  h = _max_pool_2x2(_relu_first(_conv_same(h, k2, b2),
                                width.kept_units(64, w)))
  h = h.reshape(len(h), -1)  # channels_last Flatten: channel fastest.
  h = _relu_first(h @ k3 + b3, width.kept_units(512, w))
  return h @ k4 + b4


def _numpy_2nn(weights, x, w):
  k1, b1, k2, b2, k3, b3 = [np.float64(v) for v in weights]
  h = _relu_first(x @ k1 + b1, width.kept_units(200, w))
  h = _relu_first(h @ k2 + b2, width.kept_units(200, w))
  return h @ k3 + b3


NUMPY_FORWARD = {'cnn': _numpy_cnn, '2nn': _numpy_2nn}


@pytest.mark.parametrize('name', sorted(BUILDERS))
@pytest.mark.parametrize('w', [1.0, 0.3])
def test_sub_model_forward_is_the_global_model_without_dropped_units(
    global_models, specs, name, w):
  x = np.random.default_rng(0).uniform(size=(3, 784)).astype(np.float32)
  weights = global_models[name].get_weights()
  sub_model = BUILDERS[name](1, width=w)
  sub_model.set_weights(width.extract(weights, specs[name], w))
  expected = NUMPY_FORWARD[name](weights, np.float64(x), w)
  got = sub_model(x).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  if name == 'cnn' and w < 1:
    # The check has teeth: the dense rows cut as one leading block (as if
    # Flatten put the channel slowest) give another function.
    naive = width.extract(weights, specs[name], w)
    naive[4] = weights[4][:naive[4].shape[0], :naive[4].shape[1]]
    sub_model.set_weights(naive)
    assert not np.allclose(sub_model(x).numpy(), expected, atol=1e-3)


# ---- What cannot be cut is refused. ----

DENSE = width.LayerInfo('Dense', ((4, 6), (6,)), 'hidden')
OUT = width.LayerInfo('Dense', ((6, 2), (2,)), 'out')


@pytest.mark.parametrize('layers, message', [
    ([DENSE, width.LayerInfo('BatchNormalization', ((6,), (6,)), 'bn'), OUT],
     "'bn' .*does not support; supported: .*Conv2D, Dense"),
    ([width.LayerInfo('Conv2D', ((3, 3, 1, 6), (6,)), 'c',
                      channels_last=False), OUT], 'not channels_last'),
    ([width.LayerInfo('Conv2D', ((3, 3, 1, 6), (6,)), 'c'),
      width.LayerInfo('Flatten', channels_last=False), OUT],
     'not channels_last'),
    ([DENSE, width.LayerInfo('Reshape', name='r'), OUT],
     'reorders the units'),
    # 12 inputs from 6 units are two positions per unit: only after Flatten.
    ([DENSE, width.LayerInfo('Dense', ((12, 2),), 'out')],
     'takes 12 inputs from a layer of 6 units'),
    ([width.LayerInfo('Dropout')], 'no trainable weights'),
])
def test_layers_a_width_cut_cannot_handle_are_refused(layers, message):
  with pytest.raises(ValueError, match=message):
    width.spec_of_layers(layers)


def test_described_layers_give_the_spec_of_the_keras_model(specs):
  layers = [
      width.LayerInfo('Reshape'),
      width.LayerInfo('Conv2D', ((5, 5, 1, 32), (32,))),
      width.LayerInfo('MaxPooling2D'),
      width.LayerInfo('Conv2D', ((5, 5, 32, 64), (64,))),
      width.LayerInfo('MaxPooling2D'),
      width.LayerInfo('Flatten'),
      width.LayerInfo('Dense', ((3136, 512), (512,))),
      width.LayerInfo('Dense', ((512, 10), (10,))),
  ]
  spec = width.spec_of_layers(layers)
  for a, b in zip(spec.indices(0.3), specs['cnn'].indices(0.3), strict=True):
    for x, y in zip(a, b, strict=True):
      np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('w', [1.0, 0.5, 0.125])
def test_scaled_weights_are_the_sub_model_with_hidden_outputs_divided_by_w(
    global_models, specs, w):
  """`width.scaled`: the Keras sub-model with scaled weights computes the
  2NN with each hidden pre-activation divided by w (HeteroFL's scaler)."""
  sub = width.extract(global_models['2nn'].get_weights(), specs['2nn'], w)
  x = np.random.default_rng(0).random((5, 784)).astype(np.float32)
  k1, b1, k2, b2, k3, b3 = [a.astype(np.float64) for a in sub]
  h1 = np.maximum((x @ k1 + b1) / w, 0)
  h2 = np.maximum((h1 @ k2 + b2) / w, 0)
  expected = h2 @ k3 + b3
  model = models.build_2nn(7, width=w)
  scaled = width.scaled(sub, specs['2nn'], w)
  model.set_weights(scaled)
  np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-4,
                             atol=1e-4)
  if w == 1.0:
    assert all(a is b or np.array_equal(a, b) for a, b in zip(scaled, sub))
  assert [a.dtype for a in scaled] == [np.float32] * 6
