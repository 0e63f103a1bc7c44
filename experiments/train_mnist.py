"""Federated training on partitioned MNIST.

  python -m experiments.train_mnist --experiment_name=NAME [flags]

Defaults: the FedAvg paper's CNN, 100 IID clients of 600 images, 10 clients
per round, 1 local epoch, batch 10. See --helpfull for every flag.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from experiments import common_flags
from tff_pipeline import cli
from tff_pipeline import tasks
from tff_pipeline.data import feature_skew
from tff_pipeline.data import partition
from tff_pipeline.training import loop

FLAGS = flags.FLAGS

common_flags.define_training_flags(
    total_rounds=20, clients_per_round=10, num_clients=100,
    client_learning_rate=0.1, rounds_per_eval=1, rounds_per_checkpoint=5,
)
# Data and model.
common_flags.define_enum('model', 'cnn', ['cnn', '2nn'],
                         'cnn: FedAvg paper CNN; 2nn: 200-200 MLP.')
common_flags.define_enum('partition', 'iid', partition.PARTITIONS.names(),
                         'Client partition: '
                         + partition.PARTITIONS.help_text())
common_flags.define_integer('shards_per_client', 2,
                            'shards: label-sorted shards per client.')
common_flags.define_float('dirichlet_alpha', 0.5,
                          'dirichlet: concentration; smaller is more skewed.')
common_flags.define_float('quantity_skew_exponent', 1.5,
                          'quantity_skew: Pareto shape of client sizes; '
                          'smaller is more skewed.')
common_flags.define_float('client_holdout_fraction', 0.0,
                          'Share of each client\'s examples held out of '
                          'training to report per-client accuracy (mean, 10th '
                          'percentile, worst, variance); 0 turns it off.')
common_flags.define_enum('feature_skew', 'none',
                         feature_skew.FEATURE_SKEWS.names(),
                         'Feature-distribution skew of a minority of clients: '
                         + feature_skew.FEATURE_SKEWS.help_text())
common_flags.define_float('feature_skew_fraction', 0.2,
                          'Share of clients in the --feature_skew minority.')
common_flags.define_string('mnist_path', '',
                           'Keras mnist.npz or a directory of the four IDX '
                           'files; empty uses the packaged copy.')


def main(argv):
  del argv
  config = common_flags.training_config()
  spec = tasks.MnistTaskSpec(
      model=FLAGS.model,
      partition=FLAGS.partition,
      num_clients=FLAGS.num_clients,
      partition_params=partition.PartitionParams(
          shards_per_client=FLAGS.shards_per_client,
          dirichlet_alpha=FLAGS.dirichlet_alpha,
          quantity_skew_exponent=FLAGS.quantity_skew_exponent,
      ),
      mnist_path=FLAGS.mnist_path,
      client_holdout_fraction=FLAGS.client_holdout_fraction,
      feature_skew=FLAGS.feature_skew,
      feature_skew_fraction=FLAGS.feature_skew_fraction,
      seed=FLAGS.seed,
  )
  loop.prepare_outputs(config)
  task = tasks.build_mnist_task(spec)
  result = loop.run_federated(task, config, **common_flags.run_options())
  print(f'final test accuracy {result.summary["final_eval_accuracy"]:.4f} '
        f'after {result.summary["rounds_completed"]} rounds; results in '
        f'{result.paths.results_dir}')


if __name__ == '__main__':
  cli.run_main(main)
