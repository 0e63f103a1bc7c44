"""Optimizer registry: every name builds, bad values name their flag."""

import pytest
import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline.algorithms import optimizers


@pytest.mark.parametrize('name', optimizers.OPTIMIZERS.names())
def test_every_optimizer_builds(name):
  optimizer = optimizers.build_optimizer(
      config_lib.OptimizerConfig(name=name, learning_rate=0.1))
  assert isinstance(optimizer, tff.learning.optimizers.Optimizer)


def test_unknown_optimizer_names_the_role_flag():
  with pytest.raises(errors.UsageError, match="--server_optimizer='sgdd'"):
    optimizers.build_optimizer(
        config_lib.OptimizerConfig(name='sgdd', role='server'))


@pytest.mark.parametrize('lr', [0.0, -1.0, float('nan'), float('inf')])
def test_non_positive_learning_rate_is_refused(lr):
  with pytest.raises(errors.UsageError, match='--client_learning_rate'):
    optimizers.build_optimizer(config_lib.OptimizerConfig(learning_rate=lr))
