"""Analytic FLOPs of a Keras model: what one example costs to train on.

Convention: a multiply-add is 2 FLOPs; a convolution costs
2*K*K*Cin*Cout*Hout*Wout, a dense layer 2*in*out; bias adds (one per output)
are listed separately; the backward pass costs twice the forward pass
(gradients of the inputs and of the weights), so training an example costs
3x its forward pass (Kaplan et al. 2020, "Scaling Laws for Neural Language
Models", sec. 2.1). Activations, pooling, the loss and the optimizer update
are not counted. The simulated clock (`scheduling/devices.py`) turns these
FLOPs into seconds per local step, so a width-scaled sub-model costs what
its own layers cost.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

CONVENTION = ('multiply-add = 2 FLOPs; conv 2*K*K*Cin*Cout*Hout*Wout, '
              'dense 2*in*out; backward = 2 x forward, so '
              'forward+backward = 3 x forward; activations, pooling, '
              'loss and optimizer update not counted')


def layer_forward_flops(model: tf.keras.Model) -> list[dict[str, Any]]:
  """Analytic forward FLOPs per example of each Conv2D and Dense layer.

  Args:
    model: A built Keras model.

  Returns:
    One dict per counted layer: name, kind, macs_flops, bias_flops.
  """
  rows = []
  for layer in model.layers:
    if isinstance(layer, tf.keras.layers.Conv2D):
      kh, kw, cin, cout = layer.kernel.shape
      _, h, w, _ = layer.output_shape
      macs = 2 * kh * kw * cin * cout * h * w
      bias = h * w * cout if layer.use_bias else 0
      kind = f'conv {kh}x{kw} {cin}->{cout} out {h}x{w}'
    elif isinstance(layer, tf.keras.layers.Dense):
      fan_in, fan_out = layer.kernel.shape
      macs = 2 * fan_in * fan_out
      bias = fan_out if layer.use_bias else 0
      kind = f'dense {fan_in}->{fan_out}'
    else:
      continue
    rows.append({'name': layer.name, 'kind': kind,
                 'macs_flops': int(macs), 'bias_flops': int(bias)})
  return rows


def train_flops(model: tf.keras.Model) -> dict[str, Any]:
  """Forward and forward+backward FLOPs per example of `model`, by layer."""
  layers = layer_forward_flops(model)
  forward = sum(l['macs_flops'] for l in layers)
  bias = sum(l['bias_flops'] for l in layers)
  return {
      'convention': CONVENTION,
      'layers': layers,
      'forward_per_example': forward,
      'forward_per_example_with_bias': forward + bias,
      'train_per_example': 3 * forward,
      'train_per_example_with_bias': 3 * (forward + bias),
  }
