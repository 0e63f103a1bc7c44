"""The soak benchmark's bound, and (slow) a 500-round soak with that bound.

The bound of issue 14: after the baseline round, the RSS of each process
grows by at most max(5%, 50 MB); open file descriptors and threads do not
grow. The slow tests run `benchmarks.soak` in a fresh process, as the
benchmark itself is run, for 500 rounds locally and on two loopback workers.
"""

import json
import subprocess
import sys

import pytest

from benchmarks import soak
from tests import helpers


def _samples(rss, fds=10, threads=20):
  return {r: {'rss_mib': v, 'fds': fds, 'threads': threads}
          for r, v in rss.items()}


def test_bound_is_five_percent_or_50_megabytes():
  assert soak.rss_bound_mib(2000.0) == pytest.approx(100.0)
  assert soak.rss_bound_mib(400.0) == pytest.approx(50e6 / 2**20)


def test_verdict_compares_the_last_round_with_the_baseline():
  # At 400 MiB, 5% (20 MiB) is below the floor of 50 MB (47.68 MiB).
  within = soak.verdict(_samples({50: 100.0, 100: 400.0, 300: 450.0,
                                  500: 447.0}), 100)
  assert within['rss_growth_mib'] == pytest.approx(47.0)
  assert within['rss_mib_max_after_baseline'] == 450.0
  assert within['ok']
  grown = soak.verdict(_samples({100: 400.0, 500: 448.0}), 100)
  assert not grown['rss_ok'] and not grown['ok']
  # At 2000 MiB, 5% (100 MiB) is the bound.
  assert soak.verdict(_samples({100: 2000.0, 500: 2099.0}), 100)['ok']
  assert not soak.verdict(_samples({100: 2000.0, 500: 2101.0}), 100)['ok']


def test_verdict_compares_fds_and_threads_window_against_window():
  rounds = range(100, 501)
  samples = _samples({r: 1000.0 for r in rounds})
  samples[150] = dict(samples[150], fds=12, threads=22)  # A busy round early.
  samples[480] = dict(samples[480], fds=12, threads=21)  # Within that peak.
  result = soak.verdict(samples, 100)
  assert result['window'] == 100
  assert result['fds_max_first_window'] == 12 and result['fds_ok']
  assert result['threads_ok'] and result['ok']
  samples[490] = dict(samples[490], fds=13)
  assert not soak.verdict(samples, 100)['fds_ok']
  samples[490] = dict(samples[490], fds=10, threads=23)
  result = soak.verdict(samples, 100)
  assert result['fds_ok'] and not result['threads_ok'] and not result['ok']
  # A short span halves the windows: rounds 100-101 against 102-103.
  short = soak.verdict(_samples({r: 1.0 for r in range(100, 104)}), 100)
  assert short['window'] == 2
  with pytest.raises(ValueError, match='round 100'):
    soak.verdict(_samples({1: 1.0, 99: 1.0}), 100)


def test_growth_is_split_by_what_the_rounds_did():
  # Rounds 100..110: eval every 5, checkpoint every 10 (and the last, 110).
  rss = {100: 1000.0}
  for r in range(101, 111):
    rss[r] = rss[r - 1] + {0: 4.0, 5: 2.0}.get(r % 10, -0.5)
  kinds = soak.growth_by_round_kind(_samples(rss), 100, rounds_per_eval=5,
                                    rounds_per_checkpoint=10)
  assert kinds['checkpoint'] == {'rounds': 1, 'rss_change_mib': 4.0}
  assert kinds['eval'] == {'rounds': 1, 'rss_change_mib': 2.0}
  assert kinds['plain']['rounds'] == 8
  assert kinds['plain']['rss_change_mib'] == pytest.approx(-4.0)
  assert sum(k['rss_change_mib'] for k in kinds.values()) == pytest.approx(
      rss[110] - rss[100])


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['local', 'remote'])
def test_500_rounds_stay_within_the_bound(tmp_path, mode):
  before = helpers.worker_binary_pids()
  path = tmp_path / 'soak.json'
  run = subprocess.run(
      [sys.executable, '-m', 'benchmarks.soak', f'--mode={mode}',
       '--rounds=500', f'--json={path}'], cwd=helpers.REPO_ROOT,
      capture_output=True, text=True, timeout=1800)
  assert path.exists(), run.stderr[-2000:]
  result = json.loads(path.read_text())
  workers = 1 if mode == 'local' else 2
  assert sorted(result['verdicts']) == ['python'] + [
      f'worker{n}' for n in range(workers)]
  for name, verdict in result['verdicts'].items():
    assert verdict['last_round'] == 500, name
    assert verdict['ok'], (name, verdict)
  assert run.returncode == 0, run.stdout[-2000:]
  assert result['leaked_workers'] == []
  assert not helpers.leaked_worker_pids(before)
  # The run's own CSV columns are the same processes' RSS (read a few ms
  # earlier, before the round's files were written).
  csv_row = result['csv_memory_columns']['500']
  sampled = result['samples']
  assert csv_row['memory/python_rss_mb'] == pytest.approx(
      sampled['python']['500']['rss_mib'], abs=20)
  if mode == 'local':
    assert csv_row['memory/worker_rss_mb'] == pytest.approx(
        sampled['worker0']['500']['rss_mib'], abs=20)
  else:  # NaN in the CSV; the JSON writer stores non-finite floats as null.
    assert csv_row['memory/worker_rss_mb'] is None
