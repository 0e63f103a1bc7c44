"""Client and server optimizers from `tff.learning.optimizers`, by name.

Adaptive server optimizers (adam, yogi, adagrad) are the FedOpt family of
Reddi et al. 2021, "Adaptive Federated Optimization" (arXiv 2003.00295);
there `epsilon` is the adaptivity constant tau.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import registry

OptimizerBuilder = Callable[[config_lib.OptimizerConfig],
                            tff.learning.optimizers.Optimizer]

OPTIMIZERS: registry.Registry[OptimizerBuilder] = registry.Registry(
    'optimizer', '--client_optimizer'
)


@OPTIMIZERS.register('sgd', 'SGD, with heavy-ball momentum if momentum > 0')
def _sgd(c: config_lib.OptimizerConfig) -> tff.learning.optimizers.Optimizer:
  return tff.learning.optimizers.build_sgdm(
      learning_rate=c.learning_rate, momentum=c.momentum or None
  )


@OPTIMIZERS.register('adam', 'Adam (Kingma & Ba 2015)')
def _adam(c: config_lib.OptimizerConfig) -> tff.learning.optimizers.Optimizer:
  return tff.learning.optimizers.build_adam(
      learning_rate=c.learning_rate, epsilon=c.epsilon
  )


@OPTIMIZERS.register('yogi', 'Yogi (Zaheer et al. 2018)')
def _yogi(c: config_lib.OptimizerConfig) -> tff.learning.optimizers.Optimizer:
  return tff.learning.optimizers.build_yogi(
      learning_rate=c.learning_rate, epsilon=c.epsilon
  )


@OPTIMIZERS.register('adagrad', 'Adagrad (Duchi et al. 2011)')
def _adagrad(
    c: config_lib.OptimizerConfig,
) -> tff.learning.optimizers.Optimizer:
  return tff.learning.optimizers.build_adagrad(
      learning_rate=c.learning_rate, epsilon=c.epsilon
  )


def build_optimizer(
    c: config_lib.OptimizerConfig,
) -> tff.learning.optimizers.Optimizer:
  """Builds the optimizer named by `c.name` (errors list the valid names);
  `c` checked its other settings when it was built."""
  builder = OPTIMIZERS.get(c.name, flag=f'--{c.role}_optimizer')
  return builder(c)
