"""What mutual TLS to remote workers costs a round, on the paper's CNN.

  .venv/bin/python -m benchmarks.tls_cost [--rounds=6] [--json=PATH]

Starts two `python -m experiments.run_worker` processes on loopback with
`--tls_*` flags (certificates made for the run in a temporary directory).
Each serves its TLS front on one port and its TFF worker, plaintext, on
127.0.0.1 behind it. The coordinator (this process) builds one learning
process and runs the same rounds through two runtimes on the same two
workers: plaintext straight to the workers' internal ports, and mutual TLS
through the fronts. The two alternate round by round (plaintext, TLS,
plaintext, ...) after one warm-up round each, so that load on the shared
machine falls on both alike; each round starts from the same state, so both
see the same clients and the same work.

Workload as `round_overhead`: FedAvg paper CNN (1,663,370 parameters), 10 of
100 IID MNIST clients of 600 images a round, split 5 and 5 across the
workers, 1 local epoch, batch 10, client SGD 0.05, server SGD 1.0. It prints
the median round with and without TLS, their ratio, and the final weights'
agreement between the two paths (they must be bitwise equal).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import re
import subprocess
import sys
import tempfile
from typing import Any

from absl import app
from absl import flags
import numpy as np
import portpicker
# Before `app.run`: see the note in benchmarks/scaling.py.
import tensorflow as tf  # pylint: disable=unused-import

from benchmarks.report import environment_facts
from benchmarks.report import median
from benchmarks.report import write_json
from benchmarks.workload import FederatedRounds
from benchmarks.workload import training_config
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.runtime import certificates
from tff_pipeline.training import loop

_ROUNDS = flags.DEFINE_integer(
    'rounds', 6, 'Timed rounds per path (plaintext and TLS), after one '
    'warm-up round each.', lower_bound=1)
_JSON = flags.DEFINE_string('json', '', 'Also write the numbers here.')

_NUM_CLIENTS = 100
_CLIENTS_PER_ROUND = 10
_SEED = 0
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SERVING = re.compile(r'serving on (\S+) \(mutual TLS, worker on (\S+);')


def _make_certs(directory: str) -> dict[str, str]:
  ca = certificates.make_ca()
  certificates.write_public(os.path.join(directory, 'ca.pem'),
                            ca.certificate_pem())
  paths = {'ca': os.path.join(directory, 'ca.pem')}
  for name, issued in (
      ('worker', certificates.issue(ca, 'worker', server_hosts=['127.0.0.1'])),
      ('coordinator', certificates.issue(ca, 'coordinator', client=True))):
    paths[f'{name}_cert'], paths[f'{name}_key'] = certificates.write_issued(
        directory, name, issued)
  return paths


class _TlsWorker:
  """`run_worker` with TLS; knows its front and its internal address."""

  def __init__(self, certs: dict[str, str]):
    port = portpicker.pick_unused_port()
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'experiments.run_worker', f'--port={port}',
         f'--tls_cert={certs["worker_cert"]}',
         f'--tls_key={certs["worker_key"]}',
         f'--tls_client_ca={certs["ca"]}'],
        cwd=_REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    line = self.process.stdout.readline()
    match = _SERVING.search(line)
    if not match:
      self.stop()
      raise RuntimeError(f'run_worker did not start: {line!r}')
    self.front, self.internal = match.groups()

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      self.process.wait(timeout=30)


def _weights(state) -> list[np.ndarray]:
  return [np.asarray(w) for w in state.global_model_weights.trainable]


def _measure(task: tasks.Task, certs: dict[str, str],
             pool: list[_TlsWorker]) -> dict[str, Any]:
  config = training_config(clients_per_round=_CLIENTS_PER_ROUND,
                           client_learning_rate=0.05,
                           server_learning_rate=1.0, seed=_SEED)
  client = runtime_lib.ClientTls.from_flags(
      certs['ca'], certs['coordinator_cert'], certs['coordinator_key'])
  plain = runtime_lib.Runtime([w.internal for w in pool])
  secure = runtime_lib.Runtime([w.front for w in pool], tls=client)
  paths = {'plaintext': plain, 'tls': secure}
  try:
    with plain.installed():
      algorithm = loop.build_algorithm(task, config)
      initial = algorithm.process.initialize()
    rounds = {name: FederatedRounds(task, config, algorithm, None)
              for name in paths}
    seconds = {name: [] for name in paths}
    final = {}
    for round_num in range(1, _ROUNDS.value + 2):
      for name, runtime in paths.items():
        rounds[name].state = initial
        with runtime.installed():
          record = rounds[name].run_round(round_num)
        if round_num > 1:  # The first round of each path is the warm-up.
          seconds[name].append(record.seconds)
        final[name] = _weights(rounds[name].state)
  finally:
    plain.close()
    secure.close()
  bitwise = all(np.array_equal(a, b)
                for a, b in zip(final['plaintext'], final['tls']))
  medians = {name: median(values) for name, values in seconds.items()}
  return {
      'round_seconds': seconds,
      'round_seconds_median': medians,
      'tls_over_plaintext': medians['tls'] / medians['plaintext'],
      'tls_extra_seconds': medians['tls'] - medians['plaintext'],
      'bitwise_equal_rounds': bitwise,
  }


def main(argv):
  del argv
  env = environment_facts()
  task = tasks.build_mnist_task(tasks.MnistTaskSpec(
      model='cnn', partition='iid', num_clients=_NUM_CLIENTS, seed=_SEED))
  with tempfile.TemporaryDirectory(prefix='tls_cost') as directory:
    certs = _make_certs(directory)
    pool = []
    try:
      pool = [_TlsWorker(certs) for _ in range(2)]
      result = _measure(task, certs, pool)
    finally:
      for worker in pool:
        worker.stop()
  result.update(environment=env, loadavg_at_end=list(os.getloadavg()),
                workload={'model': 'cnn', 'num_clients': _NUM_CLIENTS,
                          'clients_per_round': _CLIENTS_PER_ROUND,
                          'workers': 2, 'timed_rounds': _ROUNDS.value})
  med = result['round_seconds_median']
  print(f"load average at start {env['loadavg_1_5_15']}, at end "
        f"{result['loadavg_at_end']}")
  for name in ('plaintext', 'tls'):
    rounds = ', '.join(f'{s:.2f}' for s in result['round_seconds'][name])
    print(f'{name:>9}: median {med[name]:.2f} s ({rounds})')
  print(f"TLS / plaintext: {result['tls_over_plaintext']:.3f}x "
        f"({result['tls_extra_seconds']:+.3f} s a round); same weights "
        f"bitwise: {result['bitwise_equal_rounds']}")
  if _JSON.value:
    write_json(_JSON.value, result)


if __name__ == '__main__':
  app.run(main)
