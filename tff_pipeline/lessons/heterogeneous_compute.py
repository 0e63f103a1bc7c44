"""Lesson 3: heterogeneous compute biases FedAvg; compensation removes it.

With per-client budgets tau_i, FedAvg minimises a surrogate that weights
client i by p_i tau_i; FedNova's normalisation (Wang et al. 2020, "Tackling
the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", arXiv 2007.07481), in the `compensated` aggregator, removes
that bias. Check: the compensated run ends closer to the optimum than
FedAvg, at most 0.25 times as far, and both runs equal their NumPy
recursions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from matplotlib import figure as figure_lib
from matplotlib import ticker
import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import heterogeneity as heterogeneity_lib
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.lessons import base
from tff_pipeline.lessons import references

# The settings of experiments/flags/regression_heterogeneous_{fedavg,
# compensated}.flags (tests/lessons_test.py checks that they agree).
HETEROGENEOUS_COMPUTE_SETTINGS: Mapping[str, Any] = {
    'num_clients': 10,
    'clients_per_round': 10,
    'examples_per_client': 50,
    'num_features': 2,
    'weight_heterogeneity': 1.0,
    'noise_std': 0.1,
    'client_batch_size': -1,
    'client_epochs_per_round': 10,
    'client_learning_rate': 0.02,
    'capacity_profile': 'uniform',
    'min_capacity': 0.1,
    'total_rounds': 100,
}


@dataclasses.dataclass(frozen=True)
class ComputeHeterogeneityResult(base.LessonResult):
  """FedAvg against the compensated aggregator under fixed capacities.

  Attributes:
    local_steps: tau_i of each client (fixed by its capacity).
    rounds: 1..R.
    fedavg_distance: FedAvg's distance to the pooled optimum per round.
    compensated_distance: The compensated aggregator's, per round.
    fedavg_reference_distance: NumPy FedAvg recursion (client weights
      n_i tau_i, the examples each processed), per round.
    compensated_reference_distance: NumPy FedNova recursion (weights n_i),
      per round.
    fedavg_fixed_point_distance: Where FedAvg converges, exactly.
    compensated_fixed_point_distance: Where FedNova converges, exactly.
    surrogate_distance: Distance of the minimiser of FedAvg's surrogate
      sum_i p_i tau_i F_i (small-step limit, Wang et al. 2020, Theorem 1)
      to the pooled optimum.
    max_reference_difference: max |distance_TFF - distance_NumPy| over
      rounds and both runs.
    reference_tolerance: Allowed difference.
    target_ratio: The issue's target for the final-distance ratio.
  """

  name: ClassVar[str] = 'compute_heterogeneity'
  title: ClassVar[str] = ('Heterogeneous compute biases FedAvg; '
                          'compensation removes the bias')

  local_steps: tuple[int, ...]
  rounds: tuple[int, ...]
  fedavg_distance: tuple[float, ...]
  compensated_distance: tuple[float, ...]
  fedavg_reference_distance: tuple[float, ...]
  compensated_reference_distance: tuple[float, ...]
  fedavg_fixed_point_distance: float
  compensated_fixed_point_distance: float
  surrogate_distance: float
  max_reference_difference: float
  reference_tolerance: float = 1e-4
  target_ratio: float = 0.25

  @property
  def ratio(self) -> float:
    """Compensated final distance / FedAvg final distance."""
    return self.compensated_distance[-1] / self.fedavg_distance[-1]

  def checks(self) -> dict[str, bool]:
    return {
        'compensated ends closer to the optimum than FedAvg':
            self.compensated_distance[-1] < self.fedavg_distance[-1],
        f'compensated / FedAvg final distance <= {self.target_ratio:g}':
            self.ratio <= self.target_ratio,
        'both runs equal their NumPy recursions (distance to '
        f'{self.reference_tolerance:g})':
            self.max_reference_difference <= self.reference_tolerance,
    }

  def numbers(self) -> str:
    return (f'tau_i = {list(self.local_steps)}; after {len(self.rounds)} '
            f'rounds FedAvg is {self.fedavg_distance[-1]:.3g} from the '
            f'optimum (fixed point {self.fedavg_fixed_point_distance:.3g}), '
            f'compensated {self.compensated_distance[-1]:.3g} (fixed point '
            f'{self.compensated_fixed_point_distance:.3g}): ratio '
            f'{self.ratio:.3f}')

  def figure(self) -> figure_lib.Figure:
    fig, (left, right) = base.new_figure(2)
    left.plot(self.rounds, self.fedavg_distance, label='FedAvg (mean)')
    left.plot(self.rounds, self.compensated_distance,
              label='compensated (FedNova)')
    left.axhline(self.fedavg_fixed_point_distance, color='C0', ls=':',
                 label='FedAvg fixed point')
    left.axhline(self.compensated_fixed_point_distance, color='C1', ls=':',
                 label='FedNova fixed point')
    left.set_yscale('log')
    left.set_ylabel('distance to pooled optimum')
    left.set_title(f'final ratio {self.ratio:.3f}')
    base.rounds_axis(left)
    left.legend()
    right.bar(range(len(self.local_steps)), self.local_steps, color='C2')
    right.set_xlabel('client')
    right.set_ylabel('local steps tau_i per round')
    right.set_title('capacity profile: uniform')
    right.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    fig.suptitle(self.title)
    fig.tight_layout()
    return fig


def compute_heterogeneity(root_dir: str, *, small: bool = False,
                          seed: int = 0,
                          runtime: runtime_lib.Runtime | None = None
                          ) -> ComputeHeterogeneityResult:
  """Lesson 3: unequal local steps bias FedAvg; FedNova removes the bias.

  Client i runs tau_i = ceil(c_i * 10) full-batch steps each round, with a
  capacity c_i ~ U[0.1, 1] fixed per client. FedAvg's update is
  sum_i p_i Delta_i with Delta_i ~ -eta tau_i grad F_i for small steps, so
  it stops where sum_i p_i tau_i grad F_i = 0: the optimum of a surrogate
  that over-weights the fast clients (Wang et al. 2020, Theorem 1). TFF's
  FedAvg even weights clients by examples processed, p_i ~ n_i tau_i.
  FedNova divides each update by tau_i and rescales by tau_eff = sum_i p_i
  tau_i, so every client counts with p_i ~ n_i again. What remains is the
  local-step drift of lesson 2.

  Args:
    root_dir: Root output directory of the runs.
    small: Fewer rounds (20 instead of 100).
    seed: Seed of the data, the capacities and the runs.
    runtime: TFF runtime to use; a local one is started when None.

  Returns:
    A `ComputeHeterogeneityResult`.
  """
  s = HETEROGENEOUS_COMPUTE_SETTINGS
  rounds = 20 if small else s['total_rounds']
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=s['num_clients'],
      examples_per_client=s['examples_per_client'],
      num_features=s['num_features'],
      weight_heterogeneity=s['weight_heterogeneity'],
      noise_std=s['noise_std'], seed=seed))
  task = tasks.build_regression_task(shards)
  heterogeneity = heterogeneity_lib.ComputeHeterogeneity(
      capacity_profile=s['capacity_profile'], min_capacity=s['min_capacity'])

  def config(aggregator: str) -> config_lib.TrainingConfig:
    return base.lesson_config(
        f'{ComputeHeterogeneityResult.name}_{aggregator}{base.suffix(small)}',
        root_dir, aggregator=aggregator, total_rounds=rounds,
        clients_per_round=s['clients_per_round'],
        client_epochs_per_round=s['client_epochs_per_round'],
        client_optimizer=config_lib.OptimizerConfig(
            learning_rate=s['client_learning_rate']),
        heterogeneity=heterogeneity, seed=seed)

  with base.runtime_scope(runtime) as rt:
    fedavg = base.run(task, config('mean'), rt)
    compensated = base.run(task, config('compensated'), rt)

  clients = base.client_arrays(shards)
  sizes = np.array([len(x) for x, _ in clients], np.float64)
  epochs = s['client_epochs_per_round']
  # The budgets the training loop gives (one full-batch step per epoch);
  # without stragglers they depend on the capacity only, not on the round.
  taus = np.array([
      heterogeneity.local_steps(seed, 1, k, 1, epochs,
                                num_clients=shards.num_clients)[0]
      for k in range(shards.num_clients)])
  eta = s['client_learning_rate']
  maps = [references.local_gd_map(x, y, eta, int(t))
          for (x, y), t in zip(clients, taus)]
  optimum = shards.pooled_optimum()
  theta0 = tasks.flatten_linear_weights(task.model_builder().get_weights())
  avg_ref = base.distances(
      references.fedavg_iterates(maps, sizes * taus, rounds, theta0), optimum)
  nova_ref = base.distances(
      references.fednova_iterates(maps, sizes, taus, rounds, theta0), optimum)
  avg_tff = base.series(fedavg, 'distance_to_optimum')
  nova_tff = base.series(compensated, 'distance_to_optimum')
  gap = max(float(np.max(np.abs(np.subtract(a, b))))
            for a, b in ((avg_tff, avg_ref), (nova_tff, nova_ref)))
  surrogate = references.weighted_client_optimum(clients, sizes * taus * taus)
  return ComputeHeterogeneityResult(
      local_steps=tuple(int(t) for t in taus),
      rounds=tuple(range(1, rounds + 1)),
      fedavg_distance=avg_tff, compensated_distance=nova_tff,
      fedavg_reference_distance=avg_ref,
      compensated_reference_distance=nova_ref,
      fedavg_fixed_point_distance=float(np.linalg.norm(
          references.fedavg_fixed_point(maps, sizes * taus) - optimum)),
      compensated_fixed_point_distance=float(np.linalg.norm(
          references.fednova_fixed_point(maps, sizes, taus) - optimum)),
      surrogate_distance=float(np.linalg.norm(surrogate - optimum)),
      max_reference_difference=gap)
