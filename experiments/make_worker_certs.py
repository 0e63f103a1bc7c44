"""Make the certificates for mutual TLS between a coordinator and its workers.

  python -m experiments.make_worker_certs --output_dir=certs \
      --worker_hosts=worker1.example,10.0.0.5

writes into --output_dir (mode 0700): `ca.pem` and `ca.key` (a new CA, or the
one already there), `<worker_name>.pem` / `.key` for the listed host names
and IPs, and `<coordinator_name>.pem` / `.key` (kept if they exist). Keys are
mode 0600 and never overwritten. Run it again with another --worker_name
and --worker_hosts for each further worker. See docs/security.md for which
file goes where.
"""

import os

from absl import flags

from tff_pipeline import cli
from tff_pipeline import errors
from tff_pipeline.runtime import certificates

FLAGS = flags.FLAGS

flags.DEFINE_string('output_dir', None, 'Directory for the files. Required.')
flags.DEFINE_list('worker_hosts', [],
                  'Host names and IP addresses of the worker, exactly as the '
                  'coordinator writes them in --workers. Required.')
flags.DEFINE_string('worker_name', 'worker',
                    'Base name of the worker\'s files and its certificate CN.')
flags.DEFINE_string('coordinator_name', 'coordinator',
                    'Base name of the coordinator\'s files and its CN.')
flags.DEFINE_float('days', 365, 'Validity of the worker and coordinator '
                   'certificates, in days (the CA: 10 years).')


def _check_name(flag: str, value: str) -> None:
  if not value or value in ('ca', '.', '..') or not value.replace(
      '-', '').replace('_', '').replace('.', '').isalnum():
    raise errors.UsageError(
        f'--{flag}={value!r}: use letters, digits, ".", "-" and "_" (and not '
        '"ca")')


def main(argv):
  del argv
  if not FLAGS.output_dir:
    raise errors.UsageError('--output_dir is required')
  if FLAGS.days <= 0:
    raise errors.UsageError(f'--days={FLAGS.days} must be positive')
  _check_name('worker_name', FLAGS.worker_name)
  _check_name('coordinator_name', FLAGS.coordinator_name)
  if FLAGS.worker_name == FLAGS.coordinator_name:
    raise errors.UsageError('--worker_name and --coordinator_name must differ')
  hosts = [h for h in FLAGS.worker_hosts if h.strip()]
  certificates.subject_alternative_names(hosts)  # Checks them first.
  directory = FLAGS.output_dir
  try:
    os.makedirs(directory, mode=0o700, exist_ok=True)
  except OSError as e:
    raise errors.OutputError(f'cannot create {directory}: {e.strerror}')
  worker_key = os.path.join(directory, f'{FLAGS.worker_name}.key')
  if os.path.exists(worker_key):
    raise errors.OutputError(
        f'{worker_key} exists; choose another --worker_name or move it away')

  ca = certificates.load_ca(directory)
  if ca is None:
    ca = certificates.make_ca()
    certificates.write_private(os.path.join(directory, certificates.CA_KEY),
                               ca.key_pem())
    certificates.write_public(os.path.join(directory, certificates.CA_CERT),
                              ca.certificate_pem())
    print(f'new CA: {os.path.join(directory, certificates.CA_CERT)} (keep '
          f'{certificates.CA_KEY} off the workers)')
  worker = certificates.issue(ca, FLAGS.worker_name, server_hosts=hosts,
                              days=FLAGS.days)
  cert, key = certificates.write_issued(directory, FLAGS.worker_name, worker)
  print(f'worker certificate for {",".join(hosts)}: {cert}, {key}')
  coordinator_cert = os.path.join(directory, f'{FLAGS.coordinator_name}.pem')
  if os.path.exists(coordinator_cert):
    print(f'coordinator certificate kept: {coordinator_cert}')
  else:
    coordinator = certificates.issue(ca, FLAGS.coordinator_name, client=True,
                                     days=FLAGS.days)
    cert, key = certificates.write_issued(directory, FLAGS.coordinator_name,
                                          coordinator)
    print(f'coordinator certificate: {cert}, {key}')


if __name__ == '__main__':
  cli.run_main(main)
