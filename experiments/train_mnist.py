"""Federated training on partitioned MNIST.

  python -m experiments.train_mnist --experiment_name=NAME [flags]

Defaults: the FedAvg paper's CNN, 100 IID clients of 600 images, 10 clients
per round, 1 local epoch, batch 10. See --helpfull for every flag.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import common_flags
from tff_pipeline import cli
from tff_pipeline import tasks
from tff_pipeline.training import loop

common_flags.define_training_flags(
    total_rounds=20, clients_per_round=10, num_clients=100,
    client_learning_rate=0.1, rounds_per_eval=1, rounds_per_checkpoint=5,
)
common_flags.define_task_flags('MNIST task: data and model',
                               tasks.MnistTaskSpec)


def main(argv):
  del argv
  config = common_flags.training_config()
  spec = common_flags.task_spec(tasks.MnistTaskSpec)
  loop.prepare_outputs(config)
  task = tasks.build_mnist_task(spec)
  result = loop.run_federated(task, config, **common_flags.run_options())
  print(f'final test accuracy {result.summary["final_eval_accuracy"]:.4f} '
        f'after {result.summary["rounds_completed"]} rounds; results in '
        f'{result.paths.results_dir}')


if __name__ == '__main__':
  cli.run_main(main)
