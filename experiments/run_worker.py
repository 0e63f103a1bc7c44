"""Serve TFF's C++ executor on this machine, for `--workers` coordinators.

  python -m experiments.run_worker --port=8000 --bind_address=10.0.0.5 \
      --tls_cert=certs/worker.pem --tls_key=certs/worker.key \
      --tls_client_ca=certs/ca.pem

Runs until Ctrl-C or SIGTERM, then stops the worker. TFF's worker itself has
no TLS and no authentication: anyone who can reach its port can run
TensorFlow computations on this machine. With the --tls_* flags it listens
on 127.0.0.1 only, and a gRPC front on --bind_address:--port admits only
clients with a certificate signed by --tls_client_ca (mutual TLS; make the
files with `python -m experiments.make_worker_certs`). Without TLS, only a
loopback --bind_address is allowed (reach it through an SSH tunnel,
`ssh -L 8000:localhost:8000 host`) unless --insecure_allow_public. See
docs/security.md.
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
from tff_pipeline.runtime import tls as tls_lib

FLAGS = flags.FLAGS

flags.DEFINE_integer('port', None, 'TCP port to serve on. Required.')
flags.DEFINE_string('bind_address', '127.0.0.1',
                    'IP address to listen on: 127.0.0.1 for an SSH tunnel; '
                    'any other address needs the --tls_* flags (or '
                    '--insecure_allow_public).')
flags.DEFINE_string('tls_cert', '',
                    'PEM certificate (chain) of this worker, for mutual TLS.')
flags.DEFINE_string('tls_key', '', 'PEM private key of --tls_cert.')
flags.DEFINE_string('tls_client_ca', '',
                    'PEM CA certificate that signed the coordinators\' '
                    'client certificates; other clients are refused.')
flags.DEFINE_bool('insecure_allow_public', False,
                  'Serve without TLS on a non-loopback --bind_address: anyone '
                  'who reaches the port can run computations here.')
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
  tls = None
  if FLAGS.tls_cert or FLAGS.tls_key or FLAGS.tls_client_ca:
    tls = tls_lib.ServerTls.from_files(FLAGS.tls_cert, FLAGS.tls_key,
                                       FLAGS.tls_client_ca)
  warning = tls_lib.check_bind_policy(
      bind, tls=tls is not None, allow_public=FLAGS.insecure_allow_public)
  if warning:
    print(warning, file=sys.stderr)

  def announce(worker):
    threads = worker.threads
    security = (f'mutual TLS, worker on {worker.address}' if tls
                else 'plaintext')
    print(f'TFF worker (pid {worker.pid}) serving on {bind}:{FLAGS.port} '
          f'({security}; {threads[runtime.INTRA_OP_THREADS_ENV]} intra-op, '
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
          on_ready=announce, tls=tls)
  except errors.Interrupted as e:
    print(f'TFF worker on port {FLAGS.port} stopped ({e})', flush=True)
    return
  if code:
    raise errors.RuntimeUnavailableError(
        f'the TFF worker on port {FLAGS.port} exited with code {code}'
        + (f'; see {FLAGS.log_file}' if FLAGS.log_file else ''))


if __name__ == '__main__':
  cli.run_main(main)
