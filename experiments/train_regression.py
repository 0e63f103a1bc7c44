"""Federated linear regression on synthetic shards, checkable by hand.

  python -m experiments.train_regression --experiment_name=NAME [flags]

Defaults are the teaching case: y = 2x + 1 + N(0, 0.1^2), 10 IID clients of
50 examples, all clients every round, full-batch local steps. The run writes
the shards to regression_shards.npz and, in summary.json, the final weights
next to the pooled least-squares optimum.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from experiments import common_flags
from tff_pipeline import cli
from tff_pipeline import errors
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.training import loop
from tff_pipeline.training import outputs

FLAGS = flags.FLAGS

common_flags.define_training_flags(
    total_rounds=100, clients_per_round=10, num_clients=10,
    client_batch_size=-1, client_learning_rate=0.1, rounds_per_eval=1,
    rounds_per_checkpoint=25,
)
common_flags.define_task_flags('Regression task: synthetic shards',
                               regression.RegressionSpec)


def _true_weights() -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in FLAGS.true_weights)
  except ValueError:
    raise errors.UsageError(
        f'--true_weights={",".join(FLAGS.true_weights)} must be a '
        'comma-separated list of numbers'
    ) from None


def main(argv):
  del argv
  config = common_flags.training_config()
  spec = common_flags.task_spec(regression.RegressionSpec,
                                 true_weights=_true_weights())
  paths = loop.prepare_outputs(config)
  shards = regression.make_regression_shards(spec)
  outputs.atomic_write_bytes(paths.result('regression_shards.npz'),
                             shards.npz_bytes())
  task = tasks.build_regression_task(shards)
  result = loop.run_federated(task, config, **common_flags.run_options())
  summary = result.summary
  print(f'final weights {summary["final_weights"]}, optimum '
        f'{summary["optimum_weights"]}, distance '
        f'{summary["final_eval_distance_to_optimum"]:.3g}; results in '
        f'{result.paths.results_dir}')


if __name__ == '__main__':
  cli.run_main(main)
