"""Lesson 1: FedSGD with example weights is gradient descent on pooled data.

FedSGD with all clients, full-batch gradients and example-count weights
n_i / n is gradient descent on the pooled data (McMahan et al. 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
arXiv 1602.05629, sec. 2): sum_i (n_i / n) grad F_i = grad F. Check: the
iterates agree with NumPy's to 1e-5.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from matplotlib import figure as figure_lib
import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.lessons import base
from tff_pipeline.lessons import references


@dataclasses.dataclass(frozen=True)
class FedSgdResult(base.LessonResult):
  """FedSGD against NumPy gradient descent on the pooled data.

  Attributes:
    num_clients: Clients (all take part every round).
    client_sizes: n_i.
    learning_rate: The server's step size, GD's step size.
    rounds: 1..R.
    federated_loss: Pooled MSE of FedSGD's model after each round.
    gd_loss: Pooled MSE of NumPy GD's iterate after each step.
    federated_distance: FedSGD's distance to the pooled optimum per round.
    gd_distance: GD's distance to the pooled optimum per step.
    federated_weights: FedSGD's final [w..., b].
    gd_weights: GD's final [w..., b].
    uniform_distance: Distance to the pooled optimum after R steps of the
      same GD with clients weighted 1/K instead of n_i/n: what forgetting the
      example weights would cost.
    max_weight_difference: max |federated - GD| over the final weights.
    max_loss_relative_difference: max over rounds of |loss_fed - loss_gd| /
      loss_gd.
    max_distance_difference: max over rounds of the gap between the two
      distances to the optimum (the iterates, compared round by round).
    tolerance: Allowed differences (float32 TFF against float64 NumPy).
  """

  name: ClassVar[str] = 'fedsgd_equals_gd'
  title: ClassVar[str] = 'FedSGD equals centralized gradient descent'

  num_clients: int
  client_sizes: tuple[int, ...]
  learning_rate: float
  rounds: tuple[int, ...]
  federated_loss: tuple[float, ...]
  gd_loss: tuple[float, ...]
  federated_distance: tuple[float, ...]
  gd_distance: tuple[float, ...]
  federated_weights: tuple[float, ...]
  gd_weights: tuple[float, ...]
  uniform_distance: float
  max_weight_difference: float
  max_loss_relative_difference: float
  max_distance_difference: float
  tolerance: float = 1e-5

  def checks(self) -> dict[str, bool]:
    return {
        f'final weights equal GD\'s to {self.tolerance:g}':
            self.max_weight_difference <= self.tolerance,
        f'pooled MSE equals GD\'s every round (relative {self.tolerance:g})':
            self.max_loss_relative_difference <= self.tolerance,
        'distance to the optimum equals GD\'s every round (to '
        f'{self.tolerance:g})':
            self.max_distance_difference <= self.tolerance,
    }

  def numbers(self) -> str:
    return (f'{len(self.rounds)} rounds, {self.num_clients} clients of sizes '
            f'{min(self.client_sizes)}..{max(self.client_sizes)}: max '
            f'|w_fed - w_GD| = {self.max_weight_difference:.2g}, max relative '
            f'loss gap {self.max_loss_relative_difference:.2g}; uniform client '
            f'weights would end {self.uniform_distance:.3g} from the optimum '
            f'(FedSGD: {self.federated_distance[-1]:.3g})')

  def figure(self) -> figure_lib.Figure:
    fig, (left, right) = base.new_figure(2)
    left.plot(self.rounds, self.gd_loss, '-', lw=2, label='NumPy GD, pooled')
    left.plot(self.rounds, self.federated_loss, 'o', ms=4,
              label='FedSGD (TFF), weights n_i/n')
    left.set_yscale('log')
    left.set_ylabel('pooled MSE')
    left.set_title('the same iterates')
    base.rounds_axis(left)
    left.legend()
    gaps = [abs(f - g) / g for f, g in zip(self.federated_loss, self.gd_loss)]
    right.plot(self.rounds, base.positive(gaps), 'o-', ms=3)
    right.axhline(self.tolerance, color='r', ls='--',
                  label=f'tolerance {self.tolerance:g}')
    right.set_yscale('log')
    right.set_ylabel('|loss_fed - loss_GD| / loss_GD')
    right.set_title('float32 round-off only')
    base.rounds_axis(right)
    right.legend()
    fig.suptitle(self.title)
    fig.tight_layout()
    return fig


def fedsgd_equals_gd(root_dir: str, *, small: bool = False, seed: int = 0,
                     runtime: runtime_lib.Runtime | None = None
                     ) -> FedSgdResult:
  """Lesson 1: FedSGD with example weights is GD on the pooled data.

  Each client sends the gradient of its mean loss, grad F_i = 2 X_i^T
  (X_i w - y_i) / n_i, and the server averages them with weights n_i / n:
  sum_i (n_i / n) grad F_i = 2 X^T (X w - y) / n = grad F, the gradient of
  the pooled MSE. So R rounds of FedSGD with server step eta are R steps of
  GD from the same start (zero), whatever the shards look like. Shards
  here differ in size (Pareto), feature mean and true weights.

  Args:
    root_dir: Root output directory of the runs.
    small: Fewer clients and rounds.
    seed: Seed of the data and the run.
    runtime: TFF runtime to use; a local one is started when None.

  Returns:
    A `FedSgdResult`.
  """
  num_clients, rounds = (5, 8) if small else (10, 25)
  learning_rate = 0.3
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=num_clients, examples_per_client=30, num_features=2,
      feature_shift=0.5, weight_heterogeneity=0.5, size_exponent=1.0,
      seed=seed))
  task = tasks.build_regression_task(shards)
  config = base.lesson_config(
      f'{FedSgdResult.name}{base.suffix(small)}', root_dir, algorithm='fedsgd',
      total_rounds=rounds, clients_per_round=num_clients, seed=seed,
      server_optimizer=config_lib.OptimizerConfig(learning_rate=learning_rate,
                                                  role='server'))
  with base.runtime_scope(runtime) as rt:
    result = base.run(task, config, rt)

  optimum = shards.pooled_optimum()
  theta = tasks.flatten_linear_weights(task.model_builder().get_weights())
  uniform = theta.copy()
  gd, gd_loss = [], []
  clients = base.client_arrays(shards)
  for _ in range(rounds):
    theta = theta - learning_rate * references.mse_gradient(
        shards.x, shards.y, theta)
    uniform = uniform - learning_rate * np.mean(
        [references.mse_gradient(x, y, uniform) for x, y in clients],
        axis=0)
    gd.append(theta)
    gd_loss.append(references.mse(shards.x, shards.y, theta))
  fed_loss = base.series(result, 'loss')
  fed_distance = base.series(result, 'distance_to_optimum')
  gd_distance = base.distances(gd, optimum)
  fed_weights = tasks.flatten_linear_weights(result.final_weights)
  return FedSgdResult(
      num_clients=num_clients,
      client_sizes=tuple(int(n) for n in task.train_data.client_sizes()),
      learning_rate=learning_rate,
      rounds=tuple(int(r['round_num']) for r in result.history),
      federated_loss=fed_loss,
      gd_loss=tuple(gd_loss),
      federated_distance=fed_distance,
      gd_distance=gd_distance,
      federated_weights=tuple(fed_weights.tolist()),
      gd_weights=tuple(gd[-1].tolist()),
      uniform_distance=float(np.linalg.norm(uniform - optimum)),
      max_weight_difference=float(np.max(np.abs(fed_weights - gd[-1]))),
      max_loss_relative_difference=float(max(
          abs(f - g) / g for f, g in zip(fed_loss, gd_loss))),
      max_distance_difference=float(np.max(np.abs(
          np.subtract(fed_distance, gd_distance)))),
  )
