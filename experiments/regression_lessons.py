"""Runs the federated regression lessons and checks them against theory.

  python -m experiments.regression_lessons [--small] [--lessons=a,b]

Each lesson (see `tff_pipeline.lessons`) trains small federated linear
regressions and compares them with closed-form answers: FedSGD is gradient
descent; local steps drift on non-IID shards; heterogeneous compute biases
FedAvg and the compensated aggregator removes the bias; DP noise trades
accuracy for epsilon. Writes one PNG per lesson and `lessons.md` under
`<root_output_dir>/report`, prints the table, and exits with an error if a
closed-form check fails.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from tff_pipeline import cli
from tff_pipeline import errors
from tff_pipeline import lessons

FLAGS = flags.FLAGS

flags.DEFINE_string('root_output_dir', '/tmp/tff_pipeline_lessons',
                    'Root of the lessons\' runs; the report goes to '
                    '<root_output_dir>/report.')
flags.DEFINE_list('lessons', list(lessons.LESSON_ORDER),
                  f'Lessons to run, in order: {lessons.LESSONS.help_text()}.')
flags.DEFINE_bool('small', False,
                  'Fast versions: fewer clients, rounds and settings.')
flags.DEFINE_integer('seed', 0, 'Seed of every random choice of the lessons.')


def main(argv):
  del argv
  if not FLAGS.lessons:
    raise errors.UsageError('--lessons is empty; valid names are: '
                            f'{", ".join(lessons.LESSON_ORDER)}')
  for name in FLAGS.lessons:
    lessons.LESSONS.get(name)
  if not 0 <= FLAGS.seed < 2**31:
    raise errors.UsageError(f'--seed={FLAGS.seed} must be in [0, 2**31)')
  results = lessons.run_lessons(FLAGS.lessons, FLAGS.root_output_dir,
                                small=FLAGS.small, seed=FLAGS.seed)
  report_dir = os.path.join(FLAGS.root_output_dir, 'report')
  paths = lessons.write_report(results, report_dir)
  print(lessons.summary_table(results))
  print(f'report: {paths[-1]}')
  failed = [r.name for r in results if not r.check()]
  if failed:
    raise errors.TrainingError(
        f'closed-form check failed for {", ".join(failed)}; see '
        f'{paths[-1]}')


if __name__ == '__main__':
  cli.run_main(main)
