"""`experiments.train_mnist` with width-scaled sub-models (HeteroFL): width 1
is FedAvg, the CSV's width, byte and per-width evaluation columns, bad input,
and resume after SIGKILL."""

import csv
import json

import numpy as np
import pytest

from tests import helpers

MODULE = 'experiments.train_mnist'
TINY = ['--model=2nn', '--num_clients=20', '--clients_per_round=4',
        '--client_batch_size=50', '--total_rounds=2', '--progress=false',
        '--capacity_profile=minority', '--slow_client_fraction=0.5',
        '--min_capacity=0.1']
CAPACITY = ['--round_policy=deadline_partial', '--deadline_quantile=0.5',
            '--model_width_policy=capacity']


def _run(root, name, *args):
  done = helpers.run_binary_in_process(
      MODULE, f'--experiment_name={name}', f'--root_output_dir={root}',
      *TINY, *args)
  assert done.returncode == 0, done.stderr
  results = root / 'results' / name
  with open(results / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  return rows, json.loads((results / 'summary.json').read_text())


def test_every_client_at_width_1_is_fedavg(tmp_path):
  """Issue acceptance: the width-masked path with every client at width 1
  (masked mean, all-ones masks) ends with the weights of plain FedAvg
  (`--model_width_policy=full`, TFF's build_weighted_fed_avg)."""
  _run(tmp_path, 'full', '--model_width_policy=full')
  rows, summary = _run(tmp_path, 'ones', '--model_width_policy=mix',
                       '--model_widths=1', '--model_width_mix=20')
  for a, b in zip(helpers.final_weights(tmp_path, 'full'),
                  helpers.final_weights(tmp_path, 'ones')):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert [float(r['width/clients_at_1']) for r in rows] == [4.0, 4.0]
  assert summary['model_widths']['1']['parameters'] == 199_210
  # No narrower width: only the global model is evaluated.
  assert not any(k.startswith('eval_width/') for k in rows[-1])


def test_capacity_writes_widths_bytes_and_each_widths_accuracy(tmp_path):
  """Also with secure aggregation: the masked mean's two sums secure."""
  rows, summary = _run(tmp_path, 'capacity', *CAPACITY, '--total_rounds=3',
                       '--secure_aggregation')
  widths = summary['model_widths']
  assert list(widths) == ['1', '0.5', '0.25', '0.125', '0.0625']
  assert summary['model_width_policy'] == 'capacity'
  assert summary['model_width_scaler'] is True
  narrower_seen = False
  for row in rows:
    counts = {w: float(row[f'width/clients_at_{w}']) for w in widths}
    trained = 4 - float(row['time/clients_dropped'])
    assert sum(counts.values()) == trained
    assert float(row['communication/bytes_uploaded']) == sum(
        c * widths[w]['bytes_uploaded_per_client'] for w, c in counts.items())
    assert float(row['width/mean_width']) == pytest.approx(
        sum(c * float(w) for w, c in counts.items()) / trained)
    # With at most half the sampled clients slow (a tenth of the speed), the
    # median deadline is a fast client's time: slow ones get sub-models.
    if 0 < float(row['time/minority_share']) <= 0.5:
      assert counts['1'] < trained
      narrower_seen = True
    for w in list(widths)[1:]:
      assert 0 <= float(row[f'eval_width/{w}/accuracy']) <= 1
      assert f'eval_width/{w}/client_accuracy_p10' not in row  # no holdout
  assert narrower_seen
  assert float(rows[-1]['eval/accuracy']) > 0.5
  assert (tmp_path / 'results' / 'capacity' / 'accuracy_by_width.png').exists()


@pytest.mark.parametrize('args, message', [
    (['--model_widths=1,0'], '--model_widths=1,0 must be a non-empty list of '
     'widths in (0, 1], from the widest to the narrowest, without repeats'),
    (['--model_widths=1.5,1'], '--model_widths=1.5,1 must be a non-empty'),
    (['--model_widths=0.5,1'], '--model_widths=0.5,1 must be a non-empty'),
    (['--model_widths=1,0.5,0.5'], '--model_widths=1,0.5,0.5 must be'),
    (['--model_widths='], '--model_widths= must be a non-empty list'),
    (['--model_widths=1,half'], '--model_widths=1,half must be a non-empty'),
    (['--model_width_policy=mix', '--model_widths=1,0.5',
      '--model_width_mix=10,5'],
     '--model_width_mix=10,5 must sum to --num_clients=20 (it sums to 15)'),
    (['--model_width_policy=mix', '--model_widths=1,0.5',
      '--model_width_mix=20'],
     '--model_width_mix=20 must give one count per width of '
     '--model_widths=1,0.5'),
    (['--model_width_policy=mix', '--model_widths=1,0.5',
      '--model_width_mix=25,-5'],
     '--model_width_mix=25,-5 must be a list of client counts'),
    (['--model_width_mix=10,10'],
     '--model_width_mix=10,10 and --model_width_policy=mix go together'),
    (['--model_width_policy=mix'],
     '--model_width_mix= and --model_width_policy=mix go together'),
    (['--model_width_policy=capacity'],
     '--model_width_policy=capacity fits each client\'s width to the round\'s '
     'deadline; use --round_policy=deadline_partial or deadline_drop'),
    (CAPACITY + ['--algorithm=fedsgd'], '--algorithm=fedsgd cannot be '
     'combined with --model_width_policy=capacity'),
    (CAPACITY + ['--aggregator=compensated'],
     '--aggregator=compensated cannot be combined with'),
    (CAPACITY + ['--aggregator=median'],
     '--aggregator=median cannot be combined with'),
    (CAPACITY + ['--dp_noise_multiplier=1'],
     '--dp_noise_multiplier=1.0 cannot be combined with'),
    (CAPACITY + ['--compression'], '--compression cannot be combined with'),
    (CAPACITY + ['--clip_norm=1'], '--clip_norm=1.0 cannot be combined with'),
    (CAPACITY + ['--zeroing'], '--zeroing cannot be combined with'),
    (CAPACITY + ['--feedback'], '--feedback cannot be combined with'),
    (CAPACITY + ['--client_selection=oort'],
     '--client_selection=oort cannot be combined with'),
    (['--model_width_policy=widest'], '--model_width_policy=widest'),
])
def test_bad_width_input_gets_one_line(tmp_path, args, message):
  done = helpers.run_binary_in_process(
      MODULE, '--experiment_name=bad', f'--root_output_dir={tmp_path}', *TINY,
      *args)
  helpers.assert_one_line_error(done, message)


def _last_row(root, name):
  with open(root / 'results' / name / 'experiment.metrics.csv') as f:
    rows = list(csv.DictReader(f))
  timings = ('round_seconds',)
  return rows, {k: v for k, v in rows[-1].items()
                if k not in timings and not k.startswith('memory/')}


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_model(tmp_path):
  """Issue acceptance: a HeteroFL run (capacity widths, deadline_partial)
  killed with SIGKILL after round 2's checkpoint and rerun ends with the
  model and the last CSV row of the uninterrupted run.

  In `make test-slow` (three runs of the binary, ~35-70 s): widths add no
  program state (they follow from --seed and the devices), and
  train_mnist_test.py's SIGKILL test covers the clock and the selection
  records in the default run."""
  # 600 images a client in batches of 20: rounds 3 and 4 still take far
  # longer than the 20 ms between looks at the summary.
  args = ['--experiment_name=kill', '--model=2nn', '--num_clients=100',
          '--clients_per_round=4', '--client_batch_size=20',
          '--total_rounds=4', '--rounds_per_checkpoint=2',
          '--rounds_per_eval=4', '--progress=false', *TINY[6:], *CAPACITY]
  straight = helpers.run_binary_in_process(
      MODULE, *args, f'--root_output_dir={tmp_path / "straight"}')
  assert straight.returncode == 0, straight.stderr

  root = tmp_path / 'killed'
  summary_path = root / 'results' / 'kill' / 'summary.json'
  helpers.kill_after_rounds(MODULE, [*args, f'--root_output_dir={root}'],
                            summary_path, 2)
  assert 2 <= json.loads(summary_path.read_text())['rounds_completed'] < 4

  resumed = helpers.run_binary_in_process(MODULE, *args,
                                         f'--root_output_dir={root}')
  assert resumed.returncode == 0, resumed.stderr
  summary = json.loads(summary_path.read_text())
  assert summary['resumed_from_round'] == 2
  for a, b in zip(helpers.final_weights(tmp_path / 'straight', 'kill'),
                  helpers.final_weights(root, 'kill')):
    np.testing.assert_allclose(a, b, atol=1e-6)
  rows, last = _last_row(root, 'kill')
  assert [r['round_num'] for r in rows] == ['1', '2', '3', '4']
  assert last == _last_row(tmp_path / 'straight', 'kill')[1]
