"""Lesson 2: FedAvg with many local steps on non-IID shards drifts.

FedAvg with tau > 1 local steps on non-IID shards converges to the fixed
point of the averaged maps, w = (I - mean_i B_i)^-1 mean_i c_i, which is the
pooled optimum only for tau = 1 (client drift; Karimireddy et al. 2020,
"SCAFFOLD", arXiv 1910.06378; Charles and Konecny 2021, "Convergence and
Accuracy Trade-Offs in Federated Learning and Meta-Learning", arXiv
2103.05032). Check: distance ~0 at tau = 1 and growing with tau; TFF's
iterates equal the NumPy ones.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from matplotlib import figure as figure_lib
from matplotlib import ticker
import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.lessons import base
from tff_pipeline.lessons import references
from tff_pipeline.training import loop


@dataclasses.dataclass(frozen=True)
class LocalStepsResult(base.LessonResult):
  """FedAvg's distance to the pooled optimum against local steps.

  Attributes:
    local_steps: The tau values tried.
    learning_rate: Clients' step size eta.
    rounds: 1..R.
    distance_by_steps: Per tau, TFF FedAvg's distance to the pooled optimum
      after each round.
    final_distance: Per tau, the distance after the last round.
    reference_final_distance: Per tau, the NumPy FedAvg recursion's distance
      after the last round.
    fixed_point_distance: Per tau, the distance of FedAvg's exact fixed point
      (where it converges as R grows) to the pooled optimum.
    max_reference_difference: max over tau of |w_TFF - w_NumPy|, final
      weights.
    tolerance_one_step: Allowed distance at tau = 1. One local step is GD
      with step eta, which contracts the distance by at most
      max|1 - eta lambda(A)| per round: the NumPy recursion predicts about
      5e-5 after the small mode's 20 rounds and 1e-7 after 50, and float32
      adds about 1e-7, so 1e-3 leaves a margin of 20 and more while still
      telling "converged to w*" from the drift of tau > 1 (above 0.1).
    reference_tolerance: Allowed |w_TFF - w_NumPy| (float32 round-off).
  """

  name: ClassVar[str] = 'local_steps_drift'
  title: ClassVar[str] = ('FedAvg with many local steps on non-IID shards '
                          'drifts')

  local_steps: tuple[int, ...]
  learning_rate: float
  rounds: tuple[int, ...]
  distance_by_steps: tuple[tuple[float, ...], ...]
  final_distance: tuple[float, ...]
  reference_final_distance: tuple[float, ...]
  fixed_point_distance: tuple[float, ...]
  max_reference_difference: float
  tolerance_one_step: float = 1e-3
  reference_tolerance: float = 1e-4

  def checks(self) -> dict[str, bool]:
    one = self.final_distance[self.local_steps.index(1)]
    return {
        f'distance at 1 local step < {self.tolerance_one_step:g}':
            one < self.tolerance_one_step,
        'distance grows with every increase of local steps':
            all(a < b for a, b in zip(self.final_distance,
                                      self.final_distance[1:])),
        'TFF\'s final weights equal the NumPy FedAvg recursion '
        f'(to {self.reference_tolerance:g})':
            self.max_reference_difference <= self.reference_tolerance,
    }

  def numbers(self) -> str:
    pairs = ', '.join(f'tau={t}: {d:.3g}' for t, d in
                      zip(self.local_steps, self.final_distance))
    return (f'distance to the optimum after {len(self.rounds)} rounds: '
            f'{pairs}; max |w_TFF - w_NumPy| = '
            f'{self.max_reference_difference:.2g}')

  def figure(self) -> figure_lib.Figure:
    fig, (left, right) = base.new_figure(2)
    base.distance_panel(
        left, self.rounds,
        [(f'tau = {tau}', series)
         for tau, series in zip(self.local_steps, self.distance_by_steps)],
        'FedAvg (TFF) against rounds')
    right.plot(self.local_steps, self.fixed_point_distance, '-', color='gray',
               label='closed-form fixed point')
    right.plot(self.local_steps, self.final_distance, 'o', ms=6,
               label=f'TFF after {len(self.rounds)} rounds')
    right.set_xscale('log')
    right.xaxis.set_major_formatter(ticker.ScalarFormatter())
    right.set_xticks(list(self.local_steps))
    right.set_xlabel('local steps tau')
    right.set_ylabel('final distance')
    right.set_title('drift grows with local steps')
    right.legend()
    fig.suptitle(self.title)
    fig.tight_layout()
    return fig


def local_steps_drift(root_dir: str, *, small: bool = False, seed: int = 0,
                      runtime: runtime_lib.Runtime | None = None
                      ) -> LocalStepsResult:
  """Lesson 2: on non-IID shards, local steps pull FedAvg off the optimum.

  With tau full-batch local steps client i applies w -> B_i w + c_i,
  B_i = (I - eta A_i)^tau, and with equal sizes and full participation a
  round of FedAvg is w -> mean_i (B_i w + c_i). Its fixed point solves
  sum_i (I - B_i) (w - w_i*) = 0 with w_i* the client optimum. For tau = 1,
  I - B_i = eta A_i and this is the pooled normal equation sum_i A_i w =
  sum_i b_i: the pooled optimum. For tau > 1 the matrices (I - B_i) are
  no longer proportional to A_i, clients with different A_i (feature shift)
  and different w_i* (concept shift) pull differently, and as tau grows
  the fixed point moves toward the plain average of the client optima
  (B_i -> 0). Clients are equal in size, all take part every round.

  Args:
    root_dir: Root output directory of the runs.
    small: Fewer local-step settings and rounds.
    seed: Seed of the data and the runs.
    runtime: TFF runtime to use; a local one is started when None.

  Returns:
    A `LocalStepsResult`.
  """
  steps_list = (1, 5, 20) if small else (1, 2, 5, 10, 20)
  rounds = 20 if small else 50
  learning_rate = 0.25
  num_clients = 10
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=num_clients, examples_per_client=50, num_features=2,
      feature_shift=0.5, weight_heterogeneity=1.0, seed=seed))
  task = tasks.build_regression_task(shards)
  optimum = shards.pooled_optimum()
  clients = base.client_arrays(shards)
  theta0 = tasks.flatten_linear_weights(task.model_builder().get_weights())

  def config(steps: int) -> config_lib.TrainingConfig:
    return base.lesson_config(
        f'{LocalStepsResult.name}_tau{steps}{base.suffix(small)}', root_dir,
        total_rounds=rounds, clients_per_round=num_clients,
        client_epochs_per_round=steps, seed=seed,
        client_optimizer=config_lib.OptimizerConfig(
            learning_rate=learning_rate))

  by_steps, finals, reference, fixed, gaps = [], [], [], [], []
  with base.runtime_scope(runtime) as rt:
    # The learning process does not depend on the number of local steps
    # (the loop hands each client tau batches), so one build serves all.
    algorithm = loop.build_algorithm(task, config(1))
    for steps in steps_list:
      result = base.run(task, config(steps), rt, algorithm=algorithm)
      maps = [references.local_gd_map(x, y, learning_rate, steps)
              for x, y in clients]
      sizes = [len(x) for x, _ in clients]
      iterates = references.fedavg_iterates(maps, sizes, rounds, theta0)
      weights = tasks.flatten_linear_weights(result.final_weights)
      by_steps.append(base.series(result, 'distance_to_optimum'))
      finals.append(float(np.linalg.norm(weights - optimum)))
      reference.append(float(np.linalg.norm(iterates[-1] - optimum)))
      fixed.append(float(np.linalg.norm(
          references.fedavg_fixed_point(maps, sizes) - optimum)))
      gaps.append(float(np.max(np.abs(weights - iterates[-1]))))
  return LocalStepsResult(
      local_steps=steps_list, learning_rate=learning_rate,
      rounds=tuple(range(1, rounds + 1)),
      distance_by_steps=tuple(by_steps), final_distance=tuple(finals),
      reference_final_distance=tuple(reference),
      fixed_point_distance=tuple(fixed),
      max_reference_difference=max(gaps))
