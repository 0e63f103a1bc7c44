"""Lessons for teachers: small federated regressions with closed-form answers.

Each lesson runs a few federated linear regressions through the library
(`tasks.build_regression_task` and `loop.run_federated`), computes what the
theory says the numbers must be, and returns a result whose `check()` says
whether the closed-form check holds. Linear regression with mean squared
error is the one federated problem whose every iterate can be written down:
a full-batch gradient step on client i is the affine map

    w -> (I - eta A_i) w + eta b_i,   A_i = 2 X_i^T X_i / n_i,
                                      b_i = 2 X_i^T y_i / n_i,

(X_i with a column of ones for the bias), so tau local steps are an affine
map w -> B_i w + c_i too, and a round of FedAvg is the average of those maps.

1. `fedsgd_equals_gd`: FedSGD with all clients, full-batch gradients and
   example-count weights n_i / n is gradient descent on the pooled data
   (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
   from Decentralized Data", arXiv 1602.05629, sec. 2): sum_i (n_i / n)
   grad F_i = grad F. Check: the iterates agree with NumPy's to 1e-5.
2. `local_steps_drift`: FedAvg with tau > 1 local steps on non-IID shards
   converges to the fixed point of the averaged maps, w = (I - mean_i B_i)^-1
   mean_i c_i, which is the pooled optimum only for tau = 1 (client drift;
   Karimireddy et al. 2020, "SCAFFOLD", arXiv 1910.06378; Charles and
   Konecny 2021, "Convergence and Accuracy Trade-Offs in Federated Learning
   and Meta-Learning", arXiv 2103.05032). Check: distance ~0 at tau = 1 and
   growing with tau; TFF's iterates equal the NumPy ones.
3. `compute_heterogeneity`: with per-client budgets tau_i, FedAvg minimises
   a surrogate that weights client i by p_i tau_i; FedNova's normalisation
   (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in
   Heterogeneous Federated Optimization", arXiv 2007.07481), in the
   `compensated` aggregator, removes that bias. Check: the compensated run
   ends closer to the optimum than FedAvg, at most 0.25 times as far, and
   both runs equal their NumPy recursions.
4. `dp_noise`: DP-FedAvg (McMahan et al. 2018, "Learning Differentially
   Private Recurrent Language Models", arXiv 1710.06963) clips each update
   to C and adds N(0, sigma^2 C^2) to their sum; more noise buys a smaller
   epsilon (RDP accounting, `tff_pipeline.privacy`) and costs accuracy.
   Check: epsilon decreases with sigma, and the error with noise is at least
   the error without.

Every lesson takes `small=True` for a fast version (tests, the notebook's
small mode) that still passes its check. `write_report` draws one PNG per
lesson and a `lessons.md` table.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import io
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from matplotlib import figure as figure_lib
from matplotlib import ticker
import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import heterogeneity as heterogeneity_lib
from tff_pipeline import privacy
from tff_pipeline import registry
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.training import loop
from tff_pipeline.training import outputs

# ---------------------------------------------------------------------------
# NumPy references.
# ---------------------------------------------------------------------------

AffineMap = tuple[np.ndarray, np.ndarray]
"""(B, c): the map w -> B w + c on flattened linear weights [w_1..w_d, b]."""


def design_matrix(x: np.ndarray) -> np.ndarray:
  """[x, 1] in float64: the features with a column of ones for the bias."""
  x = np.asarray(x, np.float64)
  return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def mse_gradient(x: np.ndarray, y: np.ndarray,
                 theta: np.ndarray) -> np.ndarray:
  """Gradient of mean((X theta - y)^2), the Keras MSE, at theta."""
  design = design_matrix(x)
  target = np.asarray(y, np.float64).reshape(-1)
  return 2.0 / len(design) * design.T @ (design @ theta - target)


def mse(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> float:
  """mean((X theta - y)^2) in float64."""
  residual = design_matrix(x) @ theta - np.asarray(y, np.float64).reshape(-1)
  return float(np.mean(residual**2))


def local_gd_map(x: np.ndarray, y: np.ndarray, learning_rate: float,
                 steps: int) -> AffineMap:
  """`steps` full-batch GD steps on one client's MSE, as an affine map.

  One step is w -> (I - eta A) w + eta b with A = 2 X^T X / n and
  b = 2 X^T y / n; composing `steps` of them gives (B, c).
  """
  design = design_matrix(x)
  target = np.asarray(y, np.float64).reshape(-1)
  n, dim = design.shape
  step = np.eye(dim) - learning_rate * 2.0 / n * design.T @ design
  shift = learning_rate * 2.0 / n * design.T @ target
  b_mat, c_vec = np.eye(dim), np.zeros(dim)
  for _ in range(steps):
    b_mat, c_vec = step @ b_mat, step @ c_vec + shift
  return b_mat, c_vec


def fedavg_iterates(maps: Sequence[AffineMap], weights: Sequence[float],
                    rounds: int, theta0: np.ndarray) -> list[np.ndarray]:
  """Full-participation FedAvg (server SGD, learning rate 1) in NumPy.

  w_{t+1} = sum_i p_i (B_i w_t + c_i), p_i = weights_i / sum(weights).
  Returns w_1 .. w_rounds.
  """
  p = np.asarray(weights, np.float64) / np.sum(weights)
  theta, iterates = np.asarray(theta0, np.float64), []
  for _ in range(rounds):
    theta = sum(pi * (b @ theta + c) for pi, (b, c) in zip(p, maps))
    iterates.append(theta)
  return iterates


def fednova_iterates(maps: Sequence[AffineMap], weights: Sequence[float],
                     local_steps: Sequence[int], rounds: int,
                     theta0: np.ndarray) -> list[np.ndarray]:
  """Full-participation FedNova (Wang et al. 2020, eq. 6) in NumPy.

  w_{t+1} = w_t + tau_eff sum_i p_i (B_i w_t + c_i - w_t) / tau_i with
  tau_eff = sum_i p_i tau_i: what the `compensated` aggregator computes
  (`aggregators.compensation.compensated_average`) with q = 0.
  """
  p = np.asarray(weights, np.float64) / np.sum(weights)
  tau = np.asarray(local_steps, np.float64)
  tau_eff = float(p @ tau)
  theta, iterates = np.asarray(theta0, np.float64), []
  for _ in range(rounds):
    theta = theta + tau_eff * sum(
        pi * (b @ theta + c - theta) / ti
        for pi, ti, (b, c) in zip(p, tau, maps))
    iterates.append(theta)
  return iterates


def fedavg_fixed_point(maps: Sequence[AffineMap],
                       weights: Sequence[float]) -> np.ndarray:
  """Where FedAvg converges: w = sum_i p_i (B_i w + c_i), solved exactly."""
  p = np.asarray(weights, np.float64) / np.sum(weights)
  b_bar = sum(pi * b for pi, (b, _) in zip(p, maps))
  c_bar = sum(pi * c for pi, (_, c) in zip(p, maps))
  return np.linalg.solve(np.eye(len(c_bar)) - b_bar, c_bar)


def fednova_fixed_point(maps: Sequence[AffineMap], weights: Sequence[float],
                        local_steps: Sequence[int]) -> np.ndarray:
  """Where FedNova converges: sum_i p_i (B_i w + c_i - w) / tau_i = 0."""
  p = np.asarray(weights, np.float64) / np.sum(weights)
  tau = np.asarray(local_steps, np.float64)
  lhs = sum(pi / ti * (np.eye(len(c)) - b)
            for pi, ti, (b, c) in zip(p, tau, maps))
  rhs = sum(pi / ti * c for pi, ti, (_, c) in zip(p, tau, maps))
  return np.linalg.solve(lhs, rhs)


def weighted_client_optimum(
    clients: Sequence[tuple[np.ndarray, np.ndarray]],
    client_weights: Sequence[float]) -> np.ndarray:
  """argmin_w sum_i q_i F_i(w), F_i the mean squared error of client i.

  Least squares in which each of client i's n_i examples has weight
  q_i / n_i.

  Args:
    clients: [(x_i, y_i)] per client.
    client_weights: q_i per client, >= 0, not all zero.

  Returns:
    [w_1..w_d, b] in float64.
  """
  xs = np.concatenate([x for x, _ in clients])
  ys = np.concatenate([np.reshape(y, -1) for _, y in clients])
  example_weights = np.concatenate([
      np.full(len(x), q / len(x)) for q, (x, _) in zip(client_weights,
                                                       clients)])
  root = np.sqrt(example_weights)
  solution, *_ = np.linalg.lstsq(design_matrix(xs) * root[:, None],
                                 np.asarray(ys, np.float64) * root,
                                 rcond=None)
  return solution


# ---------------------------------------------------------------------------
# Shared plumbing.
# ---------------------------------------------------------------------------


class LessonResult(abc.ABC):
  """What every lesson returns (each lesson's result is a frozen dataclass)."""

  name: ClassVar[str]
  title: ClassVar[str]

  @abc.abstractmethod
  def checks(self) -> dict[str, bool]:
    """The closed-form conditions, each described in words."""

  def check(self) -> bool:
    """Whether every closed-form condition holds."""
    return all(self.checks().values())

  @abc.abstractmethod
  def numbers(self) -> str:
    """The lesson's key numbers, one line of Markdown."""

  @abc.abstractmethod
  def figure(self) -> figure_lib.Figure:
    """A matplotlib figure of the lesson."""


@contextlib.contextmanager
def _runtime_scope(
    runtime: runtime_lib.Runtime | None) -> Iterator[runtime_lib.Runtime]:
  """The given runtime, or a local one started here and stopped at the end."""
  if runtime is not None:
    yield runtime
    return
  own = runtime_lib.Runtime()
  try:
    yield own
  finally:
    own.close()


def client_arrays(
    shards: regression.RegressionShards
) -> list[tuple[np.ndarray, np.ndarray]]:
  """[(x_i, y_i)] of every client, in client order."""
  return [(shards.x[shards.client_ids == k], shards.y[shards.client_ids == k])
          for k in range(shards.num_clients)]


def _run(task: tasks.Task, config: config_lib.TrainingConfig,
         runtime: runtime_lib.Runtime, **kwargs: Any) -> loop.RunResult:
  return loop.run_federated(task, config, runtime=runtime, progress=False,
                            **kwargs)


def _series(result: loop.RunResult, metric: str) -> tuple[float, ...]:
  return tuple(row[f'eval/{metric}'] for row in result.history)


def _distances(iterates: Sequence[np.ndarray],
               optimum: np.ndarray) -> tuple[float, ...]:
  return tuple(float(np.linalg.norm(t - optimum)) for t in iterates)


def _suffix(small: bool) -> str:
  return '_small' if small else ''


def _config(name: str, root_dir: str, **changes: Any
            ) -> config_lib.TrainingConfig:
  """A full-batch, all-clients config; checkpoints only at the end."""
  rounds = changes.get('total_rounds', 10)
  return config_lib.TrainingConfig(
      experiment_name=name, root_output_dir=root_dir,
      client_batch_size=-1, rounds_per_eval=1,
      rounds_per_checkpoint=rounds, **changes)


def _new_figure(panels: int) -> tuple[figure_lib.Figure, list[Any]]:
  fig = figure_lib.Figure(figsize=(5.2 * panels, 3.9), dpi=100)
  axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
  for ax in axes:
    ax.grid(True, alpha=0.3)
  return fig, axes


def _rounds_axis(ax: Any) -> None:
  ax.set_xlabel('round')
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _positive(values: Sequence[float], floor: float = 1e-12) -> list[float]:
  """Values clipped below at `floor`, for log axes."""
  return [max(v, floor) for v in values]


# ---------------------------------------------------------------------------
# Lesson 1: FedSGD is gradient descent.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FedSgdResult(LessonResult):
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
    fig, (left, right) = _new_figure(2)
    left.plot(self.rounds, self.gd_loss, '-', lw=2, label='NumPy GD, pooled')
    left.plot(self.rounds, self.federated_loss, 'o', ms=4,
              label='FedSGD (TFF), weights n_i/n')
    left.set_yscale('log')
    left.set_ylabel('pooled MSE')
    left.set_title('the same iterates')
    _rounds_axis(left)
    left.legend()
    gaps = [abs(f - g) / g for f, g in zip(self.federated_loss, self.gd_loss)]
    right.plot(self.rounds, _positive(gaps), 'o-', ms=3)
    right.axhline(self.tolerance, color='r', ls='--',
                  label=f'tolerance {self.tolerance:g}')
    right.set_yscale('log')
    right.set_ylabel('|loss_fed - loss_GD| / loss_GD')
    right.set_title('float32 round-off only')
    _rounds_axis(right)
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
  config = _config(
      f'{FedSgdResult.name}{_suffix(small)}', root_dir, algorithm='fedsgd',
      total_rounds=rounds, clients_per_round=num_clients, seed=seed,
      server_optimizer=config_lib.OptimizerConfig(learning_rate=learning_rate,
                                                  role='server'))
  with _runtime_scope(runtime) as rt:
    result = _run(task, config, rt)

  optimum = shards.pooled_optimum()
  theta = tasks.flatten_linear_weights(task.model_builder().get_weights())
  uniform = theta.copy()
  gd, gd_loss = [], []
  clients = client_arrays(shards)
  for _ in range(rounds):
    theta = theta - learning_rate * mse_gradient(shards.x, shards.y, theta)
    uniform = uniform - learning_rate * np.mean(
        [mse_gradient(x, y, uniform) for x, y in clients], axis=0)
    gd.append(theta)
    gd_loss.append(mse(shards.x, shards.y, theta))
  fed_loss = _series(result, 'loss')
  fed_distance = _series(result, 'distance_to_optimum')
  gd_distance = _distances(gd, optimum)
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


# ---------------------------------------------------------------------------
# Lesson 2: local steps drift on non-IID shards.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocalStepsResult(LessonResult):
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
    fig, (left, right) = _new_figure(2)
    for tau, series in zip(self.local_steps, self.distance_by_steps):
      left.plot(self.rounds, _positive(series), label=f'tau = {tau}')
    left.set_yscale('log')
    left.set_ylabel('distance to pooled optimum')
    left.set_title('FedAvg (TFF) against rounds')
    _rounds_axis(left)
    left.legend()
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
  clients = client_arrays(shards)
  theta0 = tasks.flatten_linear_weights(task.model_builder().get_weights())

  def config(steps: int) -> config_lib.TrainingConfig:
    return _config(
        f'{LocalStepsResult.name}_tau{steps}{_suffix(small)}', root_dir,
        total_rounds=rounds, clients_per_round=num_clients,
        client_epochs_per_round=steps, seed=seed,
        client_optimizer=config_lib.OptimizerConfig(
            learning_rate=learning_rate))

  by_steps, finals, reference, fixed, gaps = [], [], [], [], []
  with _runtime_scope(runtime) as rt:
    # The learning process does not depend on the number of local steps
    # (the loop hands each client tau batches), so one build serves all.
    algorithm = loop.build_algorithm(task, config(1))
    for steps in steps_list:
      result = _run(task, config(steps), rt, algorithm=algorithm)
      maps = [local_gd_map(x, y, learning_rate, steps) for x, y in clients]
      sizes = [len(x) for x, _ in clients]
      iterates = fedavg_iterates(maps, sizes, rounds, theta0)
      weights = tasks.flatten_linear_weights(result.final_weights)
      by_steps.append(_series(result, 'distance_to_optimum'))
      finals.append(float(np.linalg.norm(weights - optimum)))
      reference.append(float(np.linalg.norm(iterates[-1] - optimum)))
      fixed.append(float(np.linalg.norm(
          fedavg_fixed_point(maps, sizes) - optimum)))
      gaps.append(float(np.max(np.abs(weights - iterates[-1]))))
  return LocalStepsResult(
      local_steps=steps_list, learning_rate=learning_rate,
      rounds=tuple(range(1, rounds + 1)),
      distance_by_steps=tuple(by_steps), final_distance=tuple(finals),
      reference_final_distance=tuple(reference),
      fixed_point_distance=tuple(fixed),
      max_reference_difference=max(gaps))


# ---------------------------------------------------------------------------
# Lesson 3: heterogeneous compute, and its compensation.
# ---------------------------------------------------------------------------

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
class ComputeHeterogeneityResult(LessonResult):
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
    fig, (left, right) = _new_figure(2)
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
    _rounds_axis(left)
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
    return _config(
        f'{ComputeHeterogeneityResult.name}_{aggregator}{_suffix(small)}',
        root_dir, aggregator=aggregator, total_rounds=rounds,
        clients_per_round=s['clients_per_round'],
        client_epochs_per_round=s['client_epochs_per_round'],
        client_optimizer=config_lib.OptimizerConfig(
            learning_rate=s['client_learning_rate']),
        heterogeneity=heterogeneity, seed=seed)

  with _runtime_scope(runtime) as rt:
    fedavg = _run(task, config('mean'), rt)
    compensated = _run(task, config('compensated'), rt)

  clients = client_arrays(shards)
  sizes = np.array([len(x) for x, _ in clients], np.float64)
  epochs = s['client_epochs_per_round']
  # The budgets the training loop gives (one full-batch step per epoch);
  # without stragglers they depend on the capacity only, not on the round.
  taus = np.array([
      heterogeneity.local_steps(seed, 1, k, 1, epochs,
                                num_clients=shards.num_clients)[0]
      for k in range(shards.num_clients)])
  eta = s['client_learning_rate']
  maps = [local_gd_map(x, y, eta, int(t)) for (x, y), t in zip(clients, taus)]
  optimum = shards.pooled_optimum()
  theta0 = tasks.flatten_linear_weights(task.model_builder().get_weights())
  avg_ref = _distances(fedavg_iterates(maps, sizes * taus, rounds, theta0),
                       optimum)
  nova_ref = _distances(
      fednova_iterates(maps, sizes, taus, rounds, theta0), optimum)
  avg_tff = _series(fedavg, 'distance_to_optimum')
  nova_tff = _series(compensated, 'distance_to_optimum')
  gap = max(float(np.max(np.abs(np.subtract(a, b))))
            for a, b in ((avg_tff, avg_ref), (nova_tff, nova_ref)))
  surrogate = weighted_client_optimum(clients, sizes * taus * taus)
  return ComputeHeterogeneityResult(
      local_steps=tuple(int(t) for t in taus),
      rounds=tuple(range(1, rounds + 1)),
      fedavg_distance=avg_tff, compensated_distance=nova_tff,
      fedavg_reference_distance=avg_ref,
      compensated_reference_distance=nova_ref,
      fedavg_fixed_point_distance=float(np.linalg.norm(
          fedavg_fixed_point(maps, sizes * taus) - optimum)),
      compensated_fixed_point_distance=float(np.linalg.norm(
          fednova_fixed_point(maps, sizes, taus) - optimum)),
      surrogate_distance=float(np.linalg.norm(surrogate - optimum)),
      max_reference_difference=gap)


# ---------------------------------------------------------------------------
# Lesson 4: differential privacy.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DpNoiseResult(LessonResult):
  """Accuracy and epsilon of DP-FedAvg against the noise multiplier.

  Attributes:
    noise_multipliers: sigma values; 0 is the clipped, noise-free baseline.
    clip_norm: C.
    num_clients: Clients in the federation.
    clients_per_round: Clients sampled each round.
    delta: delta of the reported (epsilon, delta).
    rounds: 1..R.
    distance_by_noise: Per sigma, distance to the pooled optimum per round.
    final_mse: Per sigma, pooled MSE of the final model.
    optimum_mse: Pooled MSE of the least-squares optimum (the floor).
    tail_distance: Per sigma, mean distance over the last `tail_rounds`
      rounds (less noisy than the last value alone).
    tail_rounds: Number of rounds averaged.
    epsilon: Per sigma, epsilon after R rounds (inf without noise).
    accountant_epsilon: Per sigma, `privacy.dp_epsilon` for the same
      (sigma, q, R, delta), computed here.
  """

  name: ClassVar[str] = 'dp_noise'
  title: ClassVar[str] = ('Differential-privacy noise against accuracy and '
                          'epsilon')

  noise_multipliers: tuple[float, ...]
  clip_norm: float
  num_clients: int
  clients_per_round: int
  delta: float
  rounds: tuple[int, ...]
  distance_by_noise: tuple[tuple[float, ...], ...]
  final_mse: tuple[float, ...]
  optimum_mse: float
  tail_distance: tuple[float, ...]
  tail_rounds: int
  epsilon: tuple[float, ...]
  accountant_epsilon: tuple[float, ...]

  def checks(self) -> dict[str, bool]:
    base = self.tail_distance[self.noise_multipliers.index(0.0)]
    order = sorted(range(len(self.noise_multipliers)),
                   key=lambda i: self.noise_multipliers[i])
    eps = [self.epsilon[i] for i in order]
    return {
        'epsilon decreases as the noise grows':
            all(a > b for a, b in zip(eps, eps[1:])),
        'the run\'s epsilon is the accountant\'s':
            all(a == b or math.isclose(a, b, rel_tol=1e-9)
                for a, b in zip(self.epsilon, self.accountant_epsilon)),
        'error with noise >= error without':
            all(d >= base for s, d in zip(self.noise_multipliers,
                                          self.tail_distance) if s > 0),
    }

  def numbers(self) -> str:
    parts = ', '.join(
        f'sigma={s:g}: eps={_format_epsilon(e)}, distance {d:.3g}'
        for s, e, d in zip(self.noise_multipliers, self.epsilon,
                           self.tail_distance))
    return (f'{self.clients_per_round} of {self.num_clients} clients per '
            f'round, C={self.clip_norm:g}, delta={self.delta:.2g}, '
            f'{len(self.rounds)} rounds: {parts} (mean of last '
            f'{self.tail_rounds} rounds)')

  def figure(self) -> figure_lib.Figure:
    fig, (left, right) = _new_figure(2)
    for sigma, series in zip(self.noise_multipliers, self.distance_by_noise):
      left.plot(self.rounds, _positive(series), label=f'sigma = {sigma:g}')
    left.set_yscale('log')
    left.set_ylabel('distance to pooled optimum')
    left.set_title('DP-FedAvg against rounds')
    _rounds_axis(left)
    left.legend()
    noised = [i for i, s in enumerate(self.noise_multipliers) if s > 0]
    right.plot(self.noise_multipliers, self.tail_distance, 'o-', color='C0')
    right.set_xlabel('noise multiplier sigma')
    right.set_ylabel(f'distance (mean of last {self.tail_rounds} rounds)',
                     color='C0')
    twin = right.twinx()
    twin.plot([self.noise_multipliers[i] for i in noised],
              [self.epsilon[i] for i in noised], 's--', color='C3')
    twin.set_yscale('log')
    twin.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
    twin.yaxis.set_minor_formatter(ticker.NullFormatter())
    twin.set_ylabel(f'epsilon at delta={self.delta:.2g}', color='C3')
    right.set_title('privacy costs accuracy')
    fig.suptitle(self.title)
    fig.tight_layout()
    return fig


def _format_epsilon(value: float) -> str:
  return 'inf' if math.isinf(value) else f'{value:.3g}'


def dp_noise(root_dir: str, *, small: bool = False, seed: int = 0,
             runtime: runtime_lib.Runtime | None = None) -> DpNoiseResult:
  """Lesson 4: DP noise buys privacy (smaller epsilon) with accuracy.

  Each round clips every sampled client's update to L2 norm C, sums, adds
  N(0, sigma^2 C^2) per coordinate and divides by the m clients of the
  round (DP-FedAvg, McMahan et al. 2018), so the global model moves by the
  clipped mean update plus noise of std sigma C / m. The server keeps
  contracting toward the optimum, so the error settles at a level that
  grows with sigma C / m. The privacy loss of R rounds of this
  Poisson-subsampled Gaussian mechanism at rate q = m / N is accounted with
  RDP (Mironov 2017; `tff_pipeline.privacy`); more noise, smaller epsilon.
  The data are IID here, so that the noise, not client sampling, is what
  the error shows; with `mean`, DP weights clients uniformly, and the
  clients are equal in size, so sigma = 0 (clipping only) is FedAvg.

  Args:
    root_dir: Root output directory of the runs.
    small: Fewer clients, rounds and noise levels.
    seed: Seed of the data and the runs (TFF draws the DP noise itself).
    runtime: TFF runtime to use; a local one is started when None.

  Returns:
    A `DpNoiseResult`.
  """
  if small:
    noises, num_clients, per_round, rounds = (0.0, 1.0, 3.0), 20, 10, 12
  else:
    noises, num_clients, per_round, rounds = (0.0, 0.3, 1.0, 3.0), 100, 20, 50
  clip = 1.0
  shards = regression.make_regression_shards(regression.RegressionSpec(
      num_clients=num_clients, examples_per_client=20, num_features=2,
      seed=seed))
  task = tasks.build_regression_task(shards)
  delta = privacy.default_delta(num_clients)
  tail = max(3, rounds // 4)

  def config(sigma: float) -> config_lib.TrainingConfig:
    aggregation = (config_lib.AggregationConfig(dp_noise_multiplier=sigma,
                                                dp_clip_norm=clip)
                   if sigma > 0 else config_lib.AggregationConfig(
                       clip_norm=clip))
    return _config(
        f'{DpNoiseResult.name}_sigma{sigma:g}{_suffix(small)}', root_dir,
        total_rounds=rounds, clients_per_round=per_round, seed=seed,
        client_optimizer=config_lib.OptimizerConfig(learning_rate=0.3),
        aggregation=aggregation)

  distances, final_mse, tails, epsilons, accountant = [], [], [], [], []
  with _runtime_scope(runtime) as rt:
    for sigma in noises:
      result = _run(task, config(sigma), rt)
      series = _series(result, 'distance_to_optimum')
      distances.append(series)
      final_mse.append(_series(result, 'loss')[-1])
      tails.append(float(np.mean(series[-tail:])))
      if sigma > 0:
        epsilons.append(float(result.summary['dp_epsilon']))
        accountant.append(privacy.dp_epsilon(
            sigma, per_round / num_clients, rounds, delta))
      else:
        epsilons.append(math.inf)
        accountant.append(math.inf)
  return DpNoiseResult(
      noise_multipliers=noises, clip_norm=clip, num_clients=num_clients,
      clients_per_round=per_round, delta=delta,
      rounds=tuple(range(1, rounds + 1)),
      distance_by_noise=tuple(distances), final_mse=tuple(final_mse),
      optimum_mse=mse(shards.x, shards.y, shards.pooled_optimum()),
      tail_distance=tuple(tails), tail_rounds=tail,
      epsilon=tuple(epsilons), accountant_epsilon=tuple(accountant))


# ---------------------------------------------------------------------------
# Registry, running and reporting.
# ---------------------------------------------------------------------------

LessonFn = Callable[..., LessonResult]
LESSONS: registry.Registry[LessonFn] = registry.Registry('lesson',
                                                         '--lessons')
LESSONS.register(FedSgdResult.name, FedSgdResult.title)(fedsgd_equals_gd)
LESSONS.register(LocalStepsResult.name, LocalStepsResult.title)(
    local_steps_drift)
LESSONS.register(ComputeHeterogeneityResult.name,
                 ComputeHeterogeneityResult.title)(compute_heterogeneity)
LESSONS.register(DpNoiseResult.name, DpNoiseResult.title)(dp_noise)

# The teaching order.
LESSON_ORDER: tuple[str, ...] = (FedSgdResult.name, LocalStepsResult.name,
                                 ComputeHeterogeneityResult.name,
                                 DpNoiseResult.name)


def run_lessons(names: Sequence[str], root_dir: str, *, small: bool = False,
                seed: int = 0, runtime: runtime_lib.Runtime | None = None
                ) -> list[LessonResult]:
  """Runs the named lessons in order on one runtime.

  Args:
    names: Lesson names (`LESSONS`); unknown names raise `UsageError`.
    root_dir: Root output directory of the runs.
    small: Run the fast versions.
    seed: Seed of every lesson.
    runtime: TFF runtime to use; one local worker is started for all the
      lessons (and stopped) when None.

  Returns:
    The results, in the order of `names`.
  """
  builders = [LESSONS.get(name) for name in names]
  with _runtime_scope(runtime) as rt:
    return [build(root_dir, small=small, seed=seed, runtime=rt)
            for build in builders]


def png_bytes(result: LessonResult) -> bytes:
  """The lesson's figure as PNG bytes (for files and notebooks)."""
  buffer = io.BytesIO()
  result.figure().savefig(buffer, format='png')
  return buffer.getvalue()


def _cell(text: str) -> str:
  """Escapes the pipes of a Markdown table cell."""
  return text.replace('|', '\\|')


def summary_table(results: Sequence[LessonResult]) -> str:
  """A Markdown table: lesson, closed-form check, numbers, whether it holds."""
  lines = ['| lesson | closed-form check | numbers | holds |',
           '| --- | --- | --- | --- |']
  for result in results:
    conditions = '; '.join(
        f'{text} ({"yes" if ok else "NO"})'
        for text, ok in result.checks().items())
    lines.append(f'| {_cell(result.title)} | {_cell(conditions)} | '
                 f'{_cell(result.numbers())} | '
                 f'{"yes" if result.check() else "**NO**"} |')
  return '\n'.join(lines) + '\n'


def write_report(results: Sequence[LessonResult], directory: str) -> list[str]:
  """Writes `<name>.png` per lesson and `lessons.md`; returns the paths.

  Every file is written atomically (`outputs.atomic_write_bytes`).

  Raises:
    errors.OutputError: `directory` cannot be created or written.
  """
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise errors.OutputError(
        f'cannot create the report directory {directory} '
        f'({e.strerror or e})') from None
  written, sections = [], []
  for result in results:
    path = os.path.join(directory, f'{result.name}.png')
    try:
      outputs.atomic_write_bytes(path, png_bytes(result))
    except OSError as e:
      raise errors.OutputError(
          f'cannot write {path} ({e.strerror or e})') from None
    written.append(path)
    sections.append(f'## {result.title}\n\n{result.numbers()}\n\n'
                    f'![{result.title}]({result.name}.png)\n')
  text = ('# Federated regression lessons\n\n' + summary_table(results) + '\n'
          + '\n'.join(sections))
  markdown = os.path.join(directory, 'lessons.md')
  try:
    outputs.atomic_write_text(markdown, text)
  except OSError as e:
    raise errors.OutputError(
        f'cannot write {markdown} ({e.strerror or e})') from None
  written.append(markdown)
  return written

