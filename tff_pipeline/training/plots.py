"""PNG plots of metrics against rounds, written atomically.

Matplotlib runs with the non-interactive Agg backend, so plotting works on
machines with no display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

from tff_pipeline.training import outputs

SIMULATED_SECONDS = 'time/elapsed_seconds'
SIMULATED_TIME_LABEL = 'simulated seconds'


def plot_series(
    path: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    ylabel: str,
    logy: bool = False,
    xlabel: str = 'round',
) -> bool:
  """Plots named (x, value) series on one axis; returns False if empty.

  x is the round unless `xlabel` says otherwise (e.g. simulated seconds).
  """
  drawable = {
      name: [(r, v) for r, v in points if v is not None and math.isfinite(v)]
      for name, points in series.items()
  }
  drawable = {k: v for k, v in drawable.items() if v}
  if not drawable:
    return False
  fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
  for name, points in drawable.items():
    rounds, values = zip(*points)
    ax.plot(rounds, values, marker='o' if len(points) < 30 else None,
            markersize=3, label=name)
  if logy and all(v > 0 for pts in drawable.values() for _, v in pts):
    ax.set_yscale('log')
  ax.set_xlabel(xlabel)
  if xlabel == 'round':
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  plt.close(fig)
  outputs.atomic_write_bytes(path, buffer.getvalue())
  return True


def plot_history(
    history: Sequence[Mapping[str, float]],
    results_dir_path: Callable[[str], str],
    experiment_name: str,
) -> list[str]:
  """Writes loss and metric plots from per-round rows; returns the paths.

  One PNG per evaluation metric (`eval/<name>`), each with the matching
  training metric from the clients when there is one, and
  `accuracy_vs_simulated_time.png`: the evaluation accuracy against the
  simulated clock (`time/elapsed_seconds`, docs/simulated_time.md). With
  width-scaled sub-models (docs/heterofl.md), `accuracy_by_width.png`: the
  global model's accuracy and each width's sub-model's
  (`eval_width/<w>/accuracy`).
  """
  written = []
  eval_names = sorted({
      key.split('/', 1)[1] for row in history for key in row
      if key.startswith('eval/')
  })
  client_stats = [n for n in ('client_accuracy_mean', 'client_accuracy_p10',
                              'client_accuracy_min') if n in eval_names]
  if client_stats:
    series = {
        name[len('client_accuracy_'):]: [
            (row['round_num'], row[f'eval/{name}'])
            for row in history if f'eval/{name}' in row]
        for name in client_stats
    }
    path = results_dir_path('client_accuracy.png')
    if plot_series(path, series,
                   title=f'{experiment_name}: accuracy across clients '
                   '(held-out data)', ylabel='accuracy'):
      written.append(path)
  for name in eval_names:
    if name.startswith('client_accuracy_'):
      continue
    series = {'global model, evaluation data': [
        (row['round_num'], row[f'eval/{name}'])
        for row in history if f'eval/{name}' in row]}
    train_key = f'client_work/train/{name}'
    train = [(row['round_num'], row[train_key])
             for row in history if train_key in row]
    if train:
      series['clients, during local training'] = train
    path = results_dir_path(f'{name}.png')
    if plot_series(path, series, title=f'{experiment_name}: {name}',
                   ylabel=name, logy=name in ('loss', 'distance_to_optimum')):
      written.append(path)
  if 'accuracy' in eval_names:
    path = results_dir_path('accuracy_vs_simulated_time.png')
    if plot_series(path, {'global model, evaluation data': [
        (row[SIMULATED_SECONDS], row['eval/accuracy']) for row in history
        if 'eval/accuracy' in row and SIMULATED_SECONDS in row]},
                   title=f'{experiment_name}: accuracy in simulated time',
                   ylabel='accuracy', xlabel=SIMULATED_TIME_LABEL):
      written.append(path)
  widths = sorted({key.split('/')[1] for row in history for key in row
                   if key.startswith('eval_width/')
                   and key.endswith('/accuracy')}, key=float, reverse=True)
  if widths:
    series = {'global model (width 1)': [
        (row['round_num'], row['eval/accuracy']) for row in history
        if 'eval/accuracy' in row]}
    for w in widths:
      key = f'eval_width/{w}/accuracy'
      series[f'width {w} sub-model'] = [
          (row['round_num'], row[key]) for row in history if key in row]
    path = results_dir_path('accuracy_by_width.png')
    if plot_series(path, series,
                   title=f'{experiment_name}: accuracy of each width',
                   ylabel='accuracy'):
      written.append(path)
  return written


def plot_runs(
    path: str,
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    metric: str,
    *,
    title: str,
    logy: bool = False,
    simulated_time: bool = False,
) -> bool:
  """One metric of several runs against rounds, one line per run.

  Args:
    path: PNG to write.
    histories: Run label -> its per-round rows (as in the metrics CSV).
    metric: Column to plot, e.g. 'eval/client_accuracy_p10'.
    title: Plot title.
    logy: Logarithmic y axis.
    simulated_time: Put the simulated clock (`time/elapsed_seconds`) on the
      x axis instead of the round.

  Returns:
    False if no run has the metric.
  """
  x = SIMULATED_SECONDS if simulated_time else 'round_num'
  series = {
      label: [(row[x], row[metric]) for row in rows
              if metric in row and x in row]
      for label, rows in histories.items()
  }
  return plot_series(
      path, series, title=title, ylabel=metric.split('/')[-1], logy=logy,
      xlabel=SIMULATED_TIME_LABEL if simulated_time else 'round')
