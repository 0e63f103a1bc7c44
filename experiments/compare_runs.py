"""Plot one metric of several finished runs on one chart.

  python -m experiments.compare_runs \
      --results_dirs=runs/results/a,runs/results/b \
      --metric=eval/distance_to_optimum --output=compare.png --logy \
      [--simulated_time]

Reads each run's experiment.metrics.csv; the legend uses the run names (the
last part of each directory) unless --labels is given. With
--simulated_time the x axis is the simulated clock (time/elapsed_seconds)
instead of the round.
"""

import os

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from tff_pipeline import cli
from tff_pipeline import errors
from tff_pipeline.training import outputs
from tff_pipeline.training import plots

FLAGS = flags.FLAGS

flags.DEFINE_list('results_dirs', [], 'Result directories of finished runs.')
flags.DEFINE_list('labels', [], 'Legend labels, one per directory.')
flags.DEFINE_string('metric', 'eval/accuracy', 'CSV column to plot.')
flags.DEFINE_string('output', 'compare.png', 'PNG file to write.')
flags.DEFINE_string('title', '', 'Plot title (default: the metric).')
flags.DEFINE_bool('logy', False, 'Logarithmic y axis.')
flags.DEFINE_bool('simulated_time', False,
                  'x axis: the simulated clock (time/elapsed_seconds, '
                  'docs/simulated_time.md) instead of the round.')


def main(argv):
  del argv
  if not FLAGS.results_dirs:
    raise errors.UsageError('--results_dirs must name at least one run')
  labels = FLAGS.labels or [os.path.basename(os.path.normpath(d))
                            for d in FLAGS.results_dirs]
  if len(labels) != len(FLAGS.results_dirs):
    raise errors.UsageError(
        f'--labels has {len(labels)} names for {len(FLAGS.results_dirs)} '
        '--results_dirs')
  histories = {}
  for label, directory in zip(labels, FLAGS.results_dirs):
    path = os.path.join(directory, 'experiment.metrics.csv')
    if not os.path.isfile(path):
      raise errors.DataError(f'--results_dirs: no metrics CSV at {path}')
    histories[label] = outputs.read_metrics_csv(path, up_to_round=10**9)
  if not plots.plot_runs(FLAGS.output, histories, FLAGS.metric,
                         title=FLAGS.title or FLAGS.metric, logy=FLAGS.logy,
                         simulated_time=FLAGS.simulated_time):
    if FLAGS.simulated_time:
      raise errors.UsageError(
          f'--metric={FLAGS.metric} with --simulated_time: no run has both '
          'it and time/elapsed_seconds (runs from before simulated time '
          'lack the clock)')
    raise errors.UsageError(f'--metric={FLAGS.metric} is in none of the runs')
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  cli.run_main(main)
