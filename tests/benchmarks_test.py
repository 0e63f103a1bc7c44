"""The benchmarks' arithmetic and parsing, and (slow) end-to-end smoke runs.

Timings are never asserted: the benchmarks print measured numbers. What is
checked is that the numbers are computed right (FLOPs against the hand count
for the FedAvg paper CNN, the perf-report parser against a known report) and
that both scripts run to the end and write their JSON.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from benchmarks import measure
from benchmarks import perf_profile
from tests import helpers
from tff_pipeline import models
from tff_pipeline.models import flops


def test_cnn_forward_flops_match_the_hand_count():
  # conv1: 5x5x1x32 kernels at 28x28 outputs; conv2: 5x5x32x64 at 14x14
  # ('same' padding, 2x2 pooling in between); dense 7*7*64 -> 512 -> 10.
  expected = [2 * 5 * 5 * 1 * 32 * 28 * 28,
              2 * 5 * 5 * 32 * 64 * 14 * 14,
              2 * 3136 * 512,
              2 * 512 * 10]
  rows = flops.layer_forward_flops(models.build_cnn(0))
  assert [r['macs_flops'] for r in rows] == expected
  assert [r['bias_flops'] for r in rows] == [28 * 28 * 32, 14 * 14 * 64,
                                             512, 10]
  # The "about 440 GFLOP" for forward+backward on 6000 examples.
  assert 3 * sum(expected) * 6000 / 1e9 == pytest.approx(441.8, abs=0.05)


def test_2nn_forward_flops_match_the_hand_count():
  rows = flops.layer_forward_flops(models.build_2nn(0))
  assert [r['macs_flops'] for r in rows] == [2 * 784 * 200, 2 * 200 * 200,
                                             2 * 200 * 10]


_REPORT = """\
    35.90%  [JIT] tid 123              [.] 0x00007f0000001000
    10.40%  worker_binary              [.] std::_Function_handler<void (long, long), tensorflow::SpatialMaxPoolWithArgMaxHelper<Eigen::ThreadPoolDevice, float>
     7.80%  [kernel.kallsyms]          [k] finish_task_switch.isra.0
     1.00%  worker_binary              [.] dnnl::impl::cpu::x64::jit_avx512_common_convolution_bwd_weights_t<(dnnl_data_type_t)3>::execute
     0.60%  libc.so.6                  [.] malloc
# a comment line
"""


def test_perf_report_summary_groups_samples():
  summary = perf_profile.PerfProfile(pid=0, top=3)._summarize(_REPORT)
  assert summary['samples_percent_parsed'] == pytest.approx(55.7)
  by_dso = summary['by_shared_object']
  assert by_dso['[JIT]'] == pytest.approx(35.9)
  assert by_dso[
      'TFF worker binary (TF kernels, oneDNN, TFF executors)'] == pytest.approx(
          11.4)
  assert list(by_dso) == sorted(by_dso, key=lambda k: -by_dso[k])
  kinds = summary['by_kind_of_work']
  assert kinds['convolution / matmul kernels (oneDNN, Eigen)'] == (
      pytest.approx(1.0))
  assert kinds['memory: allocation and copies'] == pytest.approx(0.6)
  assert [t['percent'] for t in summary['top_symbols']] == [35.9, 10.4, 7.8]


def test_perf_profile_reports_why_it_could_not_run(monkeypatch):
  monkeypatch.setenv('PATH', '/nonexistent')
  with perf_profile.PerfProfile(pid=os.getpid()) as profile:
    pass
  assert profile.error and 'perf' in profile.error
  assert profile.summary == {}


def test_interpreter_startup_is_the_process_age_at_the_reading():
  with open('/proc/uptime', encoding='ascii') as f:
    uptime = float(f.read().split()[0])
  now = time.time()
  age = measure.interpreter_startup_seconds(uptime)
  # psutil's start time is rounded by the integer-second boot time.
  assert age == pytest.approx(now - psutil.Process().create_time(), abs=1.5)
  assert measure.interpreter_startup_seconds(None) is None


def _run_benchmark(module, *args, tmp_path):
  out = tmp_path / 'result.json'
  before = helpers.worker_binary_pids()
  done = subprocess.run(
      [sys.executable, '-m', module, f'--json={out}', *args],
      cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=1800,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert done.returncode == 0, done.stderr[-3000:]
  assert not helpers.leaked_worker_pids(before)
  return done.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_round_overhead_runs_and_reports_its_numbers(tmp_path):
  stdout, result = _run_benchmark('benchmarks.round_overhead', '--rounds=1',
                                  '--matmul_size=256', '--profile_worker',
                                  tmp_path=tmp_path)
  assert 'RATIO federated round / Keras fit' in stdout
  assert result['train_gflop_per_round'] == pytest.approx(441.8, abs=0.05)
  assert result['federated']['examples_per_round_median'] == 6000
  assert result['ratio_round_over_keras_fit'] == pytest.approx(
      result['federated']['round_seconds_median']
      / result['keras']['fit_seconds_median'])
  assert result['time_to_first_round_seconds'] > 0
  assert result['memory']['worker_peak_rss_bytes'] > 0
  profile = result['worker_profile']
  if shutil.which('perf') and profile['error'] is None:
    assert profile['samples_percent_parsed'] > 50
    assert 'Where the TFF worker' in stdout
  else:
    assert 'worker profile: not taken' in stdout


@pytest.mark.slow
def test_scaling_runs_every_setting(tmp_path):
  _, result = _run_benchmark(
      'benchmarks.scaling', '--rounds=1', '--clients_per_round_sweep=2,4',
      '--clients_per_round_sweep_num_clients=20', '--num_clients_sweep=20,40',
      '--num_clients_sweep_clients_per_round=2', tmp_path=tmp_path)
  settings = {(s['clients_per_round'], s['num_clients']): s
              for s in result['settings']}
  # IID MNIST: 60000 images over N clients, batch 10, 1 epoch.
  assert sorted(settings) == [(2, 20), (2, 40), (4, 20)]
  for (per_round, clients), s in settings.items():
    per_client = 60000 // clients
    assert s['client_size_min'] == s['client_size_max'] == per_client
    assert s['examples_per_round_median'] == per_round * per_client
    assert s['steps_per_round_median'] == per_round * per_client // 10
    assert not s['leaked_workers']
    assert s['round_seconds_min'] <= s['round_seconds_median'] <= (
        s['round_seconds_max'])
  # The printed line is the least-squares fit of the two-point sweep.
  fit = result['clients_per_round_fit']
  t2, t4 = (settings[(2, 20)]['round_seconds_median'],
            settings[(4, 20)]['round_seconds_median'])
  assert fit['seconds_per_client'] == pytest.approx((t4 - t2) / 2)
  assert fit['intercept_seconds'] == pytest.approx(t2 - 2 * (t4 - t2) / 2)
