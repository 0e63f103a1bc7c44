"""Optimizer registry: every name builds, bad values name their flag."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline.algorithms import optimizers


@pytest.mark.parametrize('name', optimizers.OPTIMIZERS.names())
def test_every_optimizer_builds(name):
  optimizer = optimizers.build_optimizer(
      config_lib.OptimizerConfig(name=name, learning_rate=0.1))
  assert isinstance(optimizer, tff.learning.optimizers.Optimizer)
  spec = tf.TensorSpec([2], tf.float32)
  assert float(optimizer.initialize(spec)['learning_rate']) == (
      pytest.approx(0.1))


def test_sgd_step_is_w_minus_lr_times_gradient():
  optimizer = optimizers.build_optimizer(
      config_lib.OptimizerConfig(name='sgd', learning_rate=0.1))
  w = tf.constant([1.0, -2.0])
  g = tf.constant([0.5, 3.0])
  state = optimizer.initialize(tf.TensorSpec([2], tf.float32))
  _, new_w = optimizer.next(state, w, g)
  np.testing.assert_allclose(new_w.numpy(), [0.95, -2.3], rtol=1e-6)


def test_unknown_optimizer_names_the_role_flag():
  with pytest.raises(errors.UsageError, match="--server_optimizer='sgdd'"):
    optimizers.build_optimizer(
        config_lib.OptimizerConfig(name='sgdd', role='server'))


@pytest.mark.parametrize('lr', [0.0, -1.0, float('nan'), float('inf')])
def test_non_positive_learning_rate_is_refused(lr):
  with pytest.raises(errors.UsageError, match='--client_learning_rate'):
    optimizers.build_optimizer(config_lib.OptimizerConfig(learning_rate=lr))
