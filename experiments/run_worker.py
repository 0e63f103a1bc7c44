"""Serve TFF's C++ executor on this machine, for `--workers` coordinators.

  python -m experiments.run_worker --port=8000 --bind_address=10.0.0.5

Runs until Ctrl-C or SIGTERM, then stops the worker. The worker has no TLS
and no authentication: anyone who can reach the port can run TensorFlow
computations on this machine. Bind it to a private-network address (never
0.0.0.0 on a public one), firewall the port, or reach it through an SSH
tunnel (`ssh -L 8000:localhost:8000 host` with the default
`--bind_address=127.0.0.1`). See the README's multi-machine section.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import sys

from absl import flags

from tff_pipeline import cli
from tff_pipeline import errors
from tff_pipeline import runtime
from tff_pipeline.runtime import lifecycle

FLAGS = flags.FLAGS

flags.DEFINE_integer('port', None, 'TCP port to serve on. Required.')
flags.DEFINE_string('bind_address', '127.0.0.1',
                    'IP address to listen on: this machine\'s private-network '
                    'address for a multi-machine run; 127.0.0.1 for an SSH '
                    'tunnel; 0.0.0.0 (every interface) only on a network you '
                    'trust.')
flags.DEFINE_integer('max_concurrent_computation_calls', -1,
                     'Limit on concurrent client computations; -1 is none.')
flags.DEFINE_integer(
    'intra_op_threads', None,
    'TensorFlow intra-op threads per op in the worker (default: '
    '$TF_NUM_INTRAOP_THREADS, else 1).', lower_bound=1)
flags.DEFINE_integer(
    'inter_op_threads', None,
    'TensorFlow inter-op threads, i.e. ops (and clients) run at once '
    '(default: $TF_NUM_INTEROP_THREADS, else 4 per core).', lower_bound=1)
flags.DEFINE_string('log_file', '',
                    'File for the worker\'s own output; empty discards it.')


def main(argv):
  del argv
  if FLAGS.port is None or not 0 < FLAGS.port < 65536:
    raise errors.UsageError(f'--port={FLAGS.port} must be in 1..65535')
  bind = FLAGS.bind_address
  if bind in ('0.0.0.0', '::'):
    print('warning: --bind_address=%s listens on every interface; the worker '
          'has no authentication, so firewall port %d' % (bind, FLAGS.port),
          file=sys.stderr)

  def announce(worker):
    threads = worker.threads
    print(f'TFF worker (pid {worker.pid}) serving on {bind}:{FLAGS.port} '
          f'({threads[runtime.INTRA_OP_THREADS_ENV]} intra-op, '
          f'{threads[runtime.INTER_OP_THREADS_ENV]} inter-op threads); '
          'Ctrl-C to stop', flush=True)

  try:
    with lifecycle.raise_on_termination_signals():
      code = runtime.serve_worker(
          FLAGS.port, bind_address=bind, log_path=FLAGS.log_file or None,
          max_concurrent_computation_calls=(
              FLAGS.max_concurrent_computation_calls),
          intra_op_threads=FLAGS.intra_op_threads,
          inter_op_threads=FLAGS.inter_op_threads,
          on_ready=announce)
  except errors.Interrupted as e:
    print(f'TFF worker on port {FLAGS.port} stopped ({e})', flush=True)
    return
  if code:
    raise errors.RuntimeUnavailableError(
        f'the TFF worker on port {FLAGS.port} exited with code {code}'
        + (f'; see {FLAGS.log_file}' if FLAGS.log_file else ''))


if __name__ == '__main__':
  cli.run_main(main)
