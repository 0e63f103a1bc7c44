"""Keras model builders, by name (`--model`).

The MNIST models are those of McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data" (arXiv 1602.05629), sec. 3:

  * `cnn`: 5x5 conv 32 -> 2x2 max-pool -> 5x5 conv 64 -> 2x2 max-pool ->
    dense 512 (ReLU) -> 10, 'same' padding: 1,663,370 parameters.
  * `2nn`: two hidden layers of 200 ReLU units: 199,210 parameters.

`linear` is one dense unit with zero-initialised kernel and bias, for the
regression lessons: with a deterministic start every iterate can be checked
by hand.

Every builder takes the run's seed; the initialisers are seeded from it, so a
seed always gives the same initial model. MNIST models output logits for
10 classes from flat 784-pixel inputs.

Every builder also takes a `width` w in (0, 1] (default 1, the model above):
the HeteroFL sub-model (Diao et al. 2021, arXiv 2010.01264) with
ceil(w * units) units in each hidden layer, inputs and outputs unchanged;
`width.py` cuts the global model's weights to fit it. `linear` has no hidden
layer, so every width builds the same model.
"""

from __future__ import annotations

from typing import Protocol

import tensorflow as tf

from tff_pipeline import registry
from tff_pipeline.models import width as width_lib


class ModelBuilder(Protocol):
  """(seed, input_dim, *, width) -> a freshly built, uncompiled Keras model."""

  def __call__(self, seed: int, input_dim: int = ..., *,
               width: float = width_lib.FULL_WIDTH) -> tf.keras.Model:
    ...


MODELS: registry.Registry[ModelBuilder] = registry.Registry('model', '--model')


def _glorot(seed: int, layer: int) -> tf.keras.initializers.Initializer:
  # Distinct seeds per layer: two same-shaped layers must not start equal.
  return tf.keras.initializers.GlorotUniform(seed=seed * 1000 + layer)


@MODELS.register('cnn', 'FedAvg paper CNN, 1,663,370 parameters',
                 tags=('mnist',))
def build_cnn(seed: int, input_dim: int = 784, *,
              width: float = width_lib.FULL_WIDTH) -> tf.keras.Model:
  """The CNN of McMahan et al. 2017 for 28x28 grayscale digits."""
  if input_dim != 784:
    raise ValueError(f'the cnn expects 784 inputs, got {input_dim}')
  conv1, conv2, hidden = (width_lib.kept_units(n, width)
                          for n in (32, 64, 512))
  layers = tf.keras.layers
  return tf.keras.Sequential([
      layers.InputLayer(input_shape=(784,)),
      layers.Reshape((28, 28, 1)),
      layers.Conv2D(conv1, 5, padding='same', activation='relu',
                    kernel_initializer=_glorot(seed, 0)),
      layers.MaxPool2D(2, padding='same'),
      layers.Conv2D(conv2, 5, padding='same', activation='relu',
                    kernel_initializer=_glorot(seed, 1)),
      layers.MaxPool2D(2, padding='same'),
      layers.Flatten(),
      layers.Dense(hidden, activation='relu',
                   kernel_initializer=_glorot(seed, 2)),
      layers.Dense(10, kernel_initializer=_glorot(seed, 3)),
  ], name='cnn')


@MODELS.register('2nn', 'FedAvg paper 2NN (200-200 ReLU), 199,210 parameters',
                 tags=('mnist',))
def build_2nn(seed: int, input_dim: int = 784, *,
              width: float = width_lib.FULL_WIDTH) -> tf.keras.Model:
  """The multilayer perceptron of McMahan et al. 2017."""
  hidden = width_lib.kept_units(200, width)
  layers = tf.keras.layers
  return tf.keras.Sequential([
      layers.InputLayer(input_shape=(input_dim,)),
      layers.Dense(hidden, activation='relu',
                   kernel_initializer=_glorot(seed, 0)),
      layers.Dense(hidden, activation='relu',
                   kernel_initializer=_glorot(seed, 1)),
      layers.Dense(10, kernel_initializer=_glorot(seed, 2)),
  ], name='2nn')


@MODELS.register('linear', 'linear regression, zero-initialised')
def build_linear(seed: int, input_dim: int = 1, *,
                 width: float = width_lib.FULL_WIDTH) -> tf.keras.Model:
  """y = x . w + b with w = 0 and b = 0 at the start."""
  del seed  # Zero initialisation needs no randomness.
  width_lib.check_width(width)  # No hidden layer: every width is the model.
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(input_dim,)),
      tf.keras.layers.Dense(1, kernel_initializer='zeros',
                            bias_initializer='zeros'),
  ], name='linear')


MNIST_MODELS = MODELS.subset('mnist')
"""The models for 784-pixel MNIST inputs and 10 classes (`--model` of
train_mnist), in the order above."""


def count_parameters(model: tf.keras.Model) -> int:
  return int(sum(int(tf.size(w)) for w in model.trainable_weights))
