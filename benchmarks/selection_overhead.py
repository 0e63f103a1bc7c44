"""What client selection and feedback add to a round of the paper CNN.

  .venv/bin/python -m benchmarks.selection_overhead [--rounds=4]

The workload of `benchmarks/round_overhead.py` (the FedAvg paper CNN, 100
IID MNIST clients of 600 images, 10 clients a round, 1 local epoch, batch
10), run in one process under each `--client_selection` (and `--feedback`),
with the round's records updated as the training loop does. For each it
prints the median round, the scheduler's share (sampling, selection,
planning, feedback) without the server's loss evaluation, and that
evaluation (`selection/evaluation_seconds`) on its own, each as a ratio of
the setting's median round. Timings on a shared machine are noisy: compare
only ratios.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import json
import time

from absl import app
from absl import flags

from benchmarks import report
from benchmarks import workload
from tff_pipeline import config as config_lib
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import mnist as mnist_lib
from tff_pipeline.scheduling import selecting
from tff_pipeline.training import loop

_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Timed rounds per setting, after '
                               'one warm-up round.', lower_bound=1)
_JSON = flags.DEFINE_string('json', '', 'Also write the numbers here.')

SETTINGS = {
    'uniform': (config_lib.SelectionConfig(), config_lib.FeedbackConfig()),
    'oort, losses on all examples': (
        config_lib.SelectionConfig(client_selection='oort',
                                   selection_loss_examples=0),
        config_lib.FeedbackConfig()),
    'oort (losses on 64 examples)': (
        config_lib.SelectionConfig(client_selection='oort'),
        config_lib.FeedbackConfig()),
    'power_of_choice, d = 20': (
        config_lib.SelectionConfig(client_selection='power_of_choice',
                                   poc_candidates=20),
        config_lib.FeedbackConfig()),
    'uniform + feedback': (config_lib.SelectionConfig(),
                           config_lib.FeedbackConfig(feedback=True)),
}


def _time_setting(task, base, algorithm, name, rounds):
  chosen, fed_back = SETTINGS[name]
  config = dataclasses.replace(base, scheduling=dataclasses.replace(
      base.scheduling, selection=chosen, feedback=fed_back))
  scheduler = selecting.build(task, config)
  state = algorithm.process.initialize()
  seconds, schedule, evaluation = [], [], []
  for round_num in range(1, rounds + 2):
    start = time.perf_counter()
    result = loop.run_round(task, config, algorithm, state, round_num,
                            scheduler)
    row = scheduler.finish_round(round_num, result.scheduled, result.row,
                                 result.weights)
    elapsed = time.perf_counter() - start
    state = result.state
    if round_num == 1:
      continue  # Warm-up.
    evaluated = row.get('selection/evaluation_seconds', 0.0)
    seconds.append(elapsed)
    schedule.append(result.schedule_seconds - evaluated)
    evaluation.append(evaluated)
  return {'round_seconds_median': report.median(seconds),
          'selection_seconds_median': report.median(schedule),
          'evaluation_seconds_median': report.median(evaluation)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  task = tasks.build_mnist_task(
      tasks.MnistTaskSpec(model='cnn', num_clients=100, partition='iid'),
      mnist_lib.load_mnist())
  base = workload.training_config(
      clients_per_round=10, client_learning_rate=0.05,
      server_learning_rate=1.0, client_batch_size=10,
      client_epochs_per_round=1, seed=0)
  results = {}
  with runtime_lib.Runtime():
    algorithm = loop.build_algorithm(task, base)
    for name in SETTINGS:
      results[name] = _time_setting(task, base, algorithm, name,
                                    _ROUNDS.value)
  print(f'{"setting":32s} {"round s":>8s} {"selection":>10s} '
        f'{"evaluation":>11s}  (ratios of the setting\'s median round)')
  for name, r in results.items():
    r['selection_ratio'] = (r['selection_seconds_median']
                            / r['round_seconds_median'])
    r['evaluation_ratio'] = (r['evaluation_seconds_median']
                             / r['round_seconds_median'])
    print(f'{name:32s} {r["round_seconds_median"]:8.3f} '
          f'{r["selection_ratio"]:10.4f} {r["evaluation_ratio"]:11.4f}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
