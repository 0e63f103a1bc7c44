"""What every lesson shares: the result base class, running, plotting.

A lesson runs federated linear regressions through the library
(`tasks.build_regression_task` and `loop.run_federated`) with the helpers
here, and returns a frozen dataclass derived from `LessonResult`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from matplotlib import figure as figure_lib
from matplotlib import ticker
import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.training import loop


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
def runtime_scope(
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


def run(task: tasks.Task, config: config_lib.TrainingConfig,
        runtime: runtime_lib.Runtime, **kwargs: Any) -> loop.RunResult:
  """`loop.run_federated` on `runtime`, without a progress bar."""
  return loop.run_federated(task, config, runtime=runtime, progress=False,
                            **kwargs)


def series(result: loop.RunResult, metric: str) -> tuple[float, ...]:
  """The evaluated `metric` of every round of a run."""
  return tuple(row[f'eval/{metric}'] for row in result.history)


def distances(iterates: Sequence[np.ndarray],
              optimum: np.ndarray) -> tuple[float, ...]:
  """The Euclidean distance of each iterate to `optimum`."""
  return tuple(float(np.linalg.norm(t - optimum)) for t in iterates)


def suffix(small: bool) -> str:
  """What the experiment names of the small mode end with."""
  return '_small' if small else ''


def lesson_config(name: str, root_dir: str, **changes: Any
                  ) -> config_lib.TrainingConfig:
  """A full-batch, all-clients config; checkpoints only at the end."""
  rounds = changes.get('total_rounds', 10)
  return config_lib.TrainingConfig(
      experiment_name=name, root_output_dir=root_dir,
      client_batch_size=-1, rounds_per_eval=1,
      rounds_per_checkpoint=rounds, **changes)


def new_figure(panels: int) -> tuple[figure_lib.Figure, list[Any]]:
  """A figure of `panels` gridded axes side by side."""
  fig = figure_lib.Figure(figsize=(5.2 * panels, 3.9), dpi=100)
  axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
  for ax in axes:
    ax.grid(True, alpha=0.3)
  return fig, axes


def rounds_axis(ax: Any) -> None:
  """Labels the x axis 'round', with integer ticks."""
  ax.set_xlabel('round')
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def positive(values: Sequence[float], floor: float = 1e-12) -> list[float]:
  """Values clipped below at `floor`, for log axes."""
  return [max(v, floor) for v in values]


def distance_panel(ax: Any, rounds: Sequence[int],
                   labelled_series: Sequence[tuple[str, Sequence[float]]],
                   title: str) -> None:
  """Distance to the pooled optimum against rounds, a line per series, log y.
  """
  for label, values in labelled_series:
    ax.plot(rounds, positive(values), label=label)
  ax.set_yscale('log')
  ax.set_ylabel('distance to pooled optimum')
  ax.set_title(title)
  rounds_axis(ax)
  ax.legend()
