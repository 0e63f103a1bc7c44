"""Width-scaled sub-models: which coordinates of the global model each holds.

HeteroFL (Diao, Ding and Tarokh 2021, "HeteroFL: Computation and
Communication Efficient Federated Learning for Heterogeneous Clients", ICLR
2021, arXiv 2010.01264, sec. 3) gives a client of capability w in (0, 1]
the sub-model made of the first ceil(w * units) units (channels) of every
hidden layer of the global model. Inputs and outputs keep their size: the
first layer sees every input feature and the last layer emits every class.
A weight of the sub-model is therefore a corner of the global weight: a
kernel keeps the rows of the previous layer's kept units and the columns of
its own, a bias its own kept units. Sub-models of smaller widths are nested
in those of larger ones, and width 1 is the global model.

One case is not a plain corner. Keras' `Flatten` (channels_last) numbers the
features of an h x w x c activation as (row, col, channel) with the channel
fastest: feature (p, ch) is row p * c + ch of the next dense kernel. A
sub-model with k < c channels numbers them p * k + ch, so the dense kernel
keeps, for every position p, the rows p * c + [0, k) -- k rows out of every
c, in order.

Everything here is NumPy on lists of arrays in the order of the model's
trainable weights (Keras' `model.trainable_weights`, TFF's
`ModelWeights.trainable`). A `WidthSpec`, derived once from the global
model's layers (`spec_of`, or `spec_of_layers` for described layers), says
for each weight which axis holds the layer's own units ("out": the last axis
of kernels and biases) and which the previous layer's ("in": the second to
last axis of a kernel). Then:

  * `extract(global_weights, spec, w)`: the sub-model's weights;
  * `scatter(sub_weights, spec, w)`: a global-shaped copy (zeros outside the
    sub-model) and a mask, 1.0 exactly where the sub-model holds the
    coordinate, e.g. to turn a sub-model's update into the input of the
    masked mean (`aggregators/masked_mean.py`);
  * `parameter_count(spec, w)`: the sub-model's size, for bytes moved;
  * `kept_units(units, w)`: the builders in `builders.py` take a `width`
    and build the sub-model's Keras model with these units.

Only models of `Conv2D` and `Dense` layers, with pooling, dropout,
activations and `Flatten` between them, are supported: the layers whose
units can be cut without changing what the rest of the layer computes. A
layer with trainable weights of another kind (batch normalisation, grouped
or channels_first convolutions, ...) is refused with a `ValueError`.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np

FULL_WIDTH = 1.0

_PASS_THROUGH = ('Activation', 'AveragePooling2D', 'Dropout', 'InputLayer',
                 'MaxPooling2D', 'ReLU', 'Softmax')
"""Weightless layers that keep the channel axis as it is."""


def check_width(width: float) -> float:
  """`width` as a float, if it is a finite number in (0, 1].

  Raises:
    ValueError: otherwise, in one line.
  """
  if (isinstance(width, bool) or not isinstance(width, numbers.Real)
      or not math.isfinite(width) or not 0 < width <= 1):
    raise ValueError(f'width must be a finite number in (0, 1], got {width!r}')
  return float(width)


def kept_units(units: int, width: float) -> int:
  """ceil(width * units): the units of a hidden layer a sub-model keeps.

  The product is taken on the decimal the width is written as, so a width
  of 0.3 keeps 3 of 10 units (in binary floating point 0.3 * 10 is
  3.0000000000000004, whose ceiling is 4). At least one unit is kept.

  Raises:
    ValueError: if `width` is not a finite number in (0, 1].
  """
  width = check_width(width)
  return max(1, math.ceil(decimal.Decimal(repr(width)) * units))


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """What a width cut needs to know about one layer of the global model.

  Attributes:
    kind: The Keras layer class name, e.g. 'Conv2D', 'Dense', 'Flatten'.
    weight_shapes: Shapes of the layer's trainable weights, in Keras' order
      (kernel, then bias).
    name: The layer's name, for messages.
    channels_last: The layer's `data_format` is channels_last (or it has
      none).
  """

  kind: str
  weight_shapes: tuple[tuple[int, ...], ...] = ()
  name: str = ''
  channels_last: bool = True


@dataclasses.dataclass(frozen=True)
class WeightCut:
  """How one trainable weight of the global model is cut to a width.

  Attributes:
    layer: The name of the layer the weight belongs to.
    shape: The weight's full (global) shape.
    out_axis: The axis of the layer's own units (the last one).
    cut_out: The layer is hidden, so its units are cut; the output layer's
      are not.
    in_axis: The axis of the previous layer's units (a kernel's second to
      last axis), or None for a bias.
    cut_in: The layer's inputs are a hidden layer's units, so they are cut;
      the first layer's inputs (the model's) are not.
    in_units: Full number of units of the previous layer (0 for the first
      layer).
    in_positions: Input features per previous unit: h * w for a dense
      layer after `Flatten` (features numbered position-major, unit
      fastest), 1 otherwise.
  """

  layer: str
  shape: tuple[int, ...]
  out_axis: int
  cut_out: bool
  in_axis: int | None = None
  cut_in: bool = False
  in_units: int = 0
  in_positions: int = 1

  def indices(self, width: float) -> tuple[np.ndarray, ...]:
    """One sorted index array per axis: the sub-model's part of the weight."""
    axes = [np.arange(n) for n in self.shape]
    if self.cut_out:
      axes[self.out_axis] = np.arange(
          kept_units(self.shape[self.out_axis], width))
    if self.in_axis is not None and self.cut_in:
      kept = kept_units(self.in_units, width)
      rows = (np.arange(self.in_positions)[:, np.newaxis] * self.in_units
              + np.arange(kept)[np.newaxis, :])
      axes[self.in_axis] = rows.reshape(-1)
    return tuple(axes)


@dataclasses.dataclass(frozen=True)
class WidthSpec:
  """The cut of every trainable weight of a global model, in model order."""

  weights: tuple[WeightCut, ...]

  @property
  def shapes(self) -> list[tuple[int, ...]]:
    """The global model's trainable weight shapes."""
    return [cut.shape for cut in self.weights]

  def indices(self, width: float) -> list[tuple[np.ndarray, ...]]:
    """Per weight, the index arrays (one per axis) of the sub-model's part."""
    check_width(width)
    return [cut.indices(width) for cut in self.weights]


@dataclasses.dataclass
class _Walk:
  """The state of `spec_of_layers` between layers."""

  last_weighted: int
  cuts: list[WeightCut] = dataclasses.field(default_factory=list)
  # Units (channels) of the last layer with weights; 0 before the first.
  units: int = 0
  flattened: bool = False


def _unsupported(info: LayerInfo, why: str) -> ValueError:
  return ValueError(f'width cut: layer {info.name or info.kind!r} '
                    f'({info.kind}) {why}')


def _cut_layer(walk: _Walk, index: int, info: LayerInfo,
               kernel_rank: int) -> None:
  """Appends the cuts of a Conv2D (kernel rank 4) or Dense (rank 2) layer."""
  if not info.channels_last:
    raise _unsupported(info, 'is not channels_last')
  if len(info.weight_shapes) not in (1, 2):
    raise _unsupported(info, f'has {len(info.weight_shapes)} trainable '
                       'weights; expected a kernel and an optional bias')
  kernel, *bias = info.weight_shapes
  if len(kernel) != kernel_rank or any(b != kernel[-1:] for b in bias):
    raise _unsupported(info, f'has weights {info.weight_shapes}; expected a '
                       f'rank-{kernel_rank} kernel and a bias of its units')
  in_features = kernel[-2]
  positions = 1
  if walk.units:
    positions, rest = divmod(in_features, walk.units)
    if rest or (positions != 1 and not walk.flattened):
      raise _unsupported(info, f'takes {in_features} inputs from a layer of '
                         f'{walk.units} units')
  cut_out = index != walk.last_weighted
  walk.cuts.append(WeightCut(
      layer=info.name, shape=tuple(kernel), out_axis=kernel_rank - 1,
      cut_out=cut_out, in_axis=kernel_rank - 2, cut_in=bool(walk.units),
      in_units=walk.units, in_positions=positions))
  walk.cuts.extend(WeightCut(layer=info.name, shape=tuple(b), out_axis=0,
                             cut_out=cut_out) for b in bias)
  walk.units = kernel[-1]
  walk.flattened = False


def _flatten(walk: _Walk, index: int, info: LayerInfo) -> None:
  del index
  if not info.channels_last:
    raise _unsupported(info, 'is not channels_last: its features would not '
                       'be numbered channel fastest')
  walk.flattened = True


def _reshape(walk: _Walk, index: int, info: LayerInfo) -> None:
  del index
  # A reshape of the model's inputs is harmless: inputs are never cut.
  if walk.units:
    raise _unsupported(info, 'reorders the units of a hidden layer')


def _pass_through(walk: _Walk, index: int, info: LayerInfo) -> None:
  del walk, index
  if info.weight_shapes:
    raise _unsupported(info, 'has trainable weights')


_LayerRule = Callable[[_Walk, int, LayerInfo], None]

_LAYER_RULES: dict[str, _LayerRule] = {
    'Conv2D': functools.partial(_cut_layer, kernel_rank=4),
    'Dense': functools.partial(_cut_layer, kernel_rank=2),
    'Flatten': _flatten,
    'Reshape': _reshape,
    **{kind: _pass_through for kind in _PASS_THROUGH},
}
"""What each supported layer kind does to the cut, by Keras class name."""


def spec_of_layers(layers: Sequence[LayerInfo]) -> WidthSpec:
  """The `WidthSpec` of a sequential model with these layers, in order.

  The last layer with weights is the output layer; every other layer with
  weights is hidden.

  Raises:
    ValueError: if a layer is of an unsupported kind, or its weights do not
      fit its neighbours (see the module docstring).
  """
  weighted = [i for i, info in enumerate(layers) if info.weight_shapes]
  if not weighted:
    raise ValueError('width cut: the model has no trainable weights')
  walk = _Walk(last_weighted=weighted[-1])
  for index, info in enumerate(layers):
    rule = _LAYER_RULES.get(info.kind)
    if rule is None:
      raise _unsupported(info, 'is of a kind a width cut does not support; '
                         f'supported: {", ".join(sorted(_LAYER_RULES))}')
    rule(walk, index, info)
  return WidthSpec(tuple(walk.cuts))


def _layer_info(layer: object) -> LayerInfo:
  """The `LayerInfo` of a Keras layer (read by duck typing, without TF)."""
  kind = type(layer).__name__
  if getattr(layer, 'groups', 1) != 1:
    kind = f'grouped {kind}'
  return LayerInfo(
      kind=kind,
      weight_shapes=tuple(tuple(int(d) for d in w.shape)
                          for w in layer.trainable_weights),
      name=layer.name,
      channels_last=getattr(layer, 'data_format',
                            'channels_last') == 'channels_last')


def spec_of(model: object) -> WidthSpec:
  """The `WidthSpec` of a built sequential Keras model (e.g. `build_cnn`).

  Raises:
    ValueError: if a layer is not supported (see `spec_of_layers`), or the
      model has trainable weights outside its layers' own.
  """
  spec = spec_of_layers([_layer_info(layer) for layer in model.layers])
  shapes = [tuple(int(d) for d in w.shape) for w in model.trainable_weights]
  if shapes != spec.shapes:
    raise ValueError(f'width cut: the model\'s trainable weights {shapes} are '
                     f'not its layers\' {spec.shapes}')
  return spec


def sub_shapes(spec: WidthSpec, width: float) -> list[tuple[int, ...]]:
  """The trainable weight shapes of the sub-model of `width`."""
  return [tuple(len(axis) for axis in index) for index in spec.indices(width)]


def parameter_count(spec: WidthSpec, width: float) -> int:
  """Number of trainable parameters of the sub-model of `width`."""
  return sum(math.prod(shape) for shape in sub_shapes(spec, width))


def _check_shapes(what: str, got: Sequence[tuple[int, ...]],
                  expected: Sequence[tuple[int, ...]]) -> None:
  if list(got) != list(expected):
    raise ValueError(f'{what} have shapes {list(got)}; expected '
                     f'{list(expected)}')


def extract(global_weights: Sequence[np.ndarray], spec: WidthSpec,
            width: float) -> list[np.ndarray]:
  """The weights of the sub-model of `width`, cut from the global weights.

  Args:
    global_weights: The global model's trainable weights, in model order.
    spec: The global model's `WidthSpec`.
    width: w in (0, 1].

  Returns:
    New arrays (copies) of the shapes `sub_shapes(spec, width)`, in the
    order and dtypes of `global_weights`.

  Raises:
    ValueError: if `width` is not in (0, 1] or the shapes are not the
      spec's.
  """
  global_weights = [np.asarray(w) for w in global_weights]
  _check_shapes('global weights', [w.shape for w in global_weights],
                spec.shapes)
  return [w[np.ix_(*index)]
          for w, index in zip(global_weights, spec.indices(width))]


def scaled(sub_weights: Sequence[np.ndarray], spec: WidthSpec,
           width: float) -> list[np.ndarray]:
  """A sub-model's weights with HeteroFL's scaler folded in.

  The scaler (Diao et al. 2021, sec. 3) divides every hidden layer's
  output (its pre-activation) by w while a width-w sub-model trains; for
  these layers that is the same network with the hidden layers' kernels and
  biases divided by w (`WeightCut.cut_out`), which is how the client work
  trains it. The paper drops the scaler at test time because its static
  batch norm re-normalises each sub-model's activations there; our models
  have no batch norm, so a sub-model is evaluated as it was trained, with
  these weights. Width 1 returns the weights unchanged.

  Args:
    sub_weights: The sub-model's trainable weights (`extract`).
    spec: The global model's `WidthSpec`.
    width: w in (0, 1].
  """
  check_width(width)
  out = []
  for w, cut in zip(sub_weights, spec.weights):
    w = np.asarray(w)
    if cut.cut_out and width != FULL_WIDTH:
      # As the client work: 1/w in float64, rounded to the weight's dtype.
      w = w * np.asarray(1.0 / width, w.dtype)
    out.append(w)
  return out


def scatter(sub_weights: Sequence[np.ndarray], spec: WidthSpec,
            width: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Puts a sub-model's weights (or update) back in the global shapes.

  The inverse of `extract`: `extract(scatter(s, spec, w)[0], spec, w)` is
  `s`.

  Args:
    sub_weights: The sub-model's trainable weights (or their update), of
      the shapes `sub_shapes(spec, width)`.
    spec: The global model's `WidthSpec`; its `shapes` are the output's.
    width: w in (0, 1].

  Returns:
    (full, mask): per weight, an array of the global shape holding the
    sub-model's values where it has them and 0 elsewhere, and an array of
    the same shape and dtype, 1.0 exactly where the sub-model holds the
    coordinate and 0.0 elsewhere.

  Raises:
    ValueError: if `width` is not in (0, 1] or the shapes do not fit.
  """
  sub_weights = [np.asarray(w) for w in sub_weights]
  indices = spec.indices(width)
  _check_shapes('sub-model weights', [w.shape for w in sub_weights],
                [tuple(len(axis) for axis in index) for index in indices])
  full, mask = [], []
  for sub, shape, index in zip(sub_weights, spec.shapes, indices):
    placed = np.zeros(shape, sub.dtype)
    placed[np.ix_(*index)] = sub
    held = np.zeros(shape, sub.dtype)
    held[np.ix_(*index)] = 1
    full.append(placed)
    mask.append(held)
  return full, mask


def masks(spec: WidthSpec, width: float,
          dtype: np.dtype = np.float32) -> list[np.ndarray]:
  """Per global weight, 1 where the sub-model of `width` holds it, else 0."""
  ones = [np.ones(shape, dtype) for shape in sub_shapes(spec, width)]
  return scatter(ones, spec, width)[1]


def unit_table(spec: WidthSpec, width: float) -> np.ndarray:
  """Per global weight, (kept "out" units, kept "in" units), as int32.

  The numbers a TF computation needs to rebuild `masks(spec, width)` with
  `kept_units`' exact decimal rounding (a float width times the units,
  rounded up in TF, would keep 4 of 10 units at width 0.3): row i is
  (k_out, k_in) for `spec.weights[i]`. The weight's coordinate is held
  where its out index is < k_out and its in index modulo the previous
  layer's units (`WeightCut.in_units`, or the whole in axis when it is not
  cut) is < k_in. Uncut axes keep all their units; a bias has k_in = 0.
  """
  rows = []
  for cut in spec.weights:
    out_units = cut.shape[cut.out_axis]
    k_out = kept_units(out_units, width) if cut.cut_out else out_units
    if cut.in_axis is None:
      k_in = 0
    elif cut.cut_in:
      k_in = kept_units(cut.in_units, width)
    else:
      k_in = cut.shape[cut.in_axis]
    rows.append((k_out, k_in))
  return np.array(rows, np.int32).reshape(len(rows), 2)
