"""Lesson 4: differential-privacy noise buys privacy with accuracy.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models", arXiv 1710.06963) clips each update to C and adds
N(0, sigma^2 C^2) to their sum; more noise buys a smaller epsilon (RDP
accounting, `tff_pipeline.privacy`) and costs accuracy. Check: epsilon
decreases with sigma, and the error with noise is at least the error
without.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from matplotlib import figure as figure_lib
from matplotlib import ticker
import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import privacy
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.lessons import base
from tff_pipeline.lessons import references


@dataclasses.dataclass(frozen=True)
class DpNoiseResult(base.LessonResult):
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
    fig, (left, right) = base.new_figure(2)
    base.distance_panel(
        left, self.rounds,
        [(f'sigma = {sigma:g}', series) for sigma, series
         in zip(self.noise_multipliers, self.distance_by_noise)],
        'DP-FedAvg against rounds')
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
    return base.lesson_config(
        f'{DpNoiseResult.name}_sigma{sigma:g}{base.suffix(small)}', root_dir,
        total_rounds=rounds, clients_per_round=per_round, seed=seed,
        client_optimizer=config_lib.OptimizerConfig(learning_rate=0.3),
        aggregation=aggregation)

  distances, final_mse, tails, epsilons, accountant = [], [], [], [], []
  with base.runtime_scope(runtime) as rt:
    for sigma in noises:
      result = base.run(task, config(sigma), rt)
      series = base.series(result, 'distance_to_optimum')
      distances.append(series)
      final_mse.append(base.series(result, 'loss')[-1])
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
      optimum_mse=references.mse(shards.x, shards.y, shards.pooled_optimum()),
      tail_distance=tuple(tails), tail_rounds=tail,
      epsilon=tuple(epsilons), accountant_epsilon=tuple(accountant))
