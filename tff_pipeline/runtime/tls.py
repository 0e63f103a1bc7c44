"""Mutual-TLS credentials for remote workers, checked before gRPC sees them.

A worker started with `run_worker --tls_cert --tls_key --tls_client_ca`
accepts only clients whose certificate `--tls_client_ca` signed
(`tls_front`). A coordinator given `--worker_tls_ca --worker_tls_cert
--worker_tls_key` checks the worker's certificate against its CA and the
address in `--workers`, and presents its own.

gRPC reports a bad certificate only as a failed connection, long after the
flags were read. So every file is read and checked here first: readable,
PEM, not expired or not yet valid, and the private key belongs to the
certificate. A problem is a one-line `UsageError` naming the flag and file.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re

from absl import logging
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
import grpc

from tff_pipeline import errors


def _read(flag: str, path: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise errors.UsageError(
        f'--{flag}={path}: cannot read it ({e.strerror})') from None


def _certificates(
    flag: str, path: str, now: datetime.datetime,
) -> tuple[bytes, list[x509.Certificate]]:
  data = _read(flag, path)
  try:
    certificates = x509.load_pem_x509_certificates(data)
  except ValueError:
    raise errors.UsageError(
        f'--{flag}={path} holds no PEM certificate') from None
  for certificate in certificates:
    subject = certificate.subject.rfc4514_string()
    if certificate.not_valid_after_utc < now:
      raise errors.UsageError(
          f'--{flag}={path}: certificate {subject} expired on '
          f'{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC')
    if certificate.not_valid_before_utc > now:
      raise errors.UsageError(
          f'--{flag}={path}: certificate {subject} is not valid before '
          f'{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC')
  return data, certificates


def _private_key(flag: str, path: str) -> tuple[bytes, object]:
  data = _read(flag, path)
  try:
    key = serialization.load_pem_private_key(data, password=None)
  except TypeError:
    raise errors.UsageError(
        f'--{flag}={path} is encrypted; give an unencrypted key in a file '
        'only you can read (chmod 600)') from None
  except (ValueError, UnsupportedAlgorithm):
    raise errors.UsageError(
        f'--{flag}={path} holds no PEM private key') from None
  mode = os.stat(path).st_mode
  if mode & 0o077:
    logging.warning('--%s=%s is readable by other users (mode %o); chmod 600 '
                    'it', flag, path, mode & 0o777)
  return data, key


def _public_der(key) -> bytes:
  return key.public_bytes(serialization.Encoding.DER,
                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_pair(cert_flag: str, cert_path: str, key_flag: str, key_path: str,
              now: datetime.datetime) -> tuple[bytes, bytes]:
  chain, certificates = _certificates(cert_flag, cert_path, now)
  key_pem, key = _private_key(key_flag, key_path)
  if _public_der(certificates[0].public_key()) != _public_der(key.public_key()):
    raise errors.UsageError(
        f'--{key_flag}={key_path} is not the private key of '
        f'--{cert_flag}={cert_path}')
  return chain, key_pem


def _now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class ServerTls:
  """A worker's certificate and key, and the CA its clients must come from.

  Build it with `from_files`, which checks the files.
  """

  certificate_chain: bytes
  private_key: bytes
  client_ca: bytes

  @classmethod
  def from_files(cls, cert: str, key: str, client_ca: str) -> 'ServerTls':
    """Reads and checks `run_worker`'s --tls_cert, --tls_key, --tls_client_ca.

    Raises:
      UsageError: a flag is missing, or a file is unreadable, not PEM,
        expired, or the key is not the certificate's.
    """
    given = {'tls_cert': cert, 'tls_key': key, 'tls_client_ca': client_ca}
    missing = [f'--{name}' for name, value in given.items() if not value]
    if missing:
      raise errors.UsageError(
          f'mutual TLS needs --tls_cert, --tls_key and --tls_client_ca; '
          f'missing {", ".join(missing)}')
    now = _now()
    chain, key_pem = _key_pair('tls_cert', cert, 'tls_key', key, now)
    ca, _ = _certificates('tls_client_ca', client_ca, now)
    return cls(chain, key_pem, ca)

  def credentials(self) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate from the CA."""
    return grpc.ssl_server_credentials(
        [(self.private_key, self.certificate_chain)],
        root_certificates=self.client_ca, require_client_auth=True)


@dataclasses.dataclass(frozen=True)
class ClientTls:
  """What a coordinator needs to reach TLS workers: their CA, and normally
  its own certificate and key (without them, TLS workers refuse it).

  Build it with `from_flags`, which checks the files.
  """

  worker_ca: bytes
  certificate_chain: bytes | None = None
  private_key: bytes | None = None

  @classmethod
  def from_flags(cls, ca: str | None, cert: str | None,
                 key: str | None) -> 'ClientTls | None':
    """Reads and checks --worker_tls_ca, --worker_tls_cert, --worker_tls_key.

    Returns:
      None when none is given (plaintext workers).

    Raises:
      UsageError: a certificate without its key (or the reverse), or a
        certificate without the workers' CA; a file is unreadable, not PEM,
        expired, or the key is not the certificate's.
    """
    if not (ca or cert or key):
      return None
    if bool(cert) != bool(key):
      raise errors.UsageError(
          '--worker_tls_cert and --worker_tls_key go together; got only '
          + ('--worker_tls_cert' if cert else '--worker_tls_key'))
    if not ca:
      raise errors.UsageError(
          '--worker_tls_cert needs --worker_tls_ca, the CA that signed the '
          'workers\' certificates')
    now = _now()
    worker_ca, _ = _certificates('worker_tls_ca', ca, now)
    if not cert:
      return cls(worker_ca)
    chain, key_pem = _key_pair('worker_tls_cert', cert, 'worker_tls_key', key,
                               now)
    return cls(worker_ca, chain, key_pem)

  def credentials(self) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=self.worker_ca, private_key=self.private_key,
        certificate_chain=self.certificate_chain)


def check_bind_policy(bind_address: str, *, tls: bool,
                      allow_public: bool) -> str | None:
  """Refuses a plaintext worker on an address other machines can reach.

  Returns:
    A warning to print when a plaintext worker listens beyond loopback
    because `allow_public` says so; None otherwise.

  Raises:
    UsageError: `bind_address` is not an IP literal, or is not loopback
      while there is no TLS and no `allow_public`.
  """
  try:
    ip = ipaddress.ip_address(bind_address)
  except ValueError:
    raise errors.UsageError(
        f'--bind_address={bind_address!r} is not an IPv4 or IPv6 address '
        "literal (for example '127.0.0.1' or '10.0.0.5')") from None
  if getattr(ip, 'ipv4_mapped', None) is not None:
    ip = ip.ipv4_mapped
  if tls or ip.is_loopback:
    return None
  if not allow_public:
    raise errors.UsageError(
        f'--bind_address={bind_address} is reachable from other machines, '
        'and without TLS anyone who reaches the port can run TensorFlow '
        'computations here and read the traffic: give --tls_cert, --tls_key '
        'and --tls_client_ca (see docs/security.md), or use 127.0.0.1 with '
        'an SSH tunnel, or pass --insecure_allow_public on a network you '
        'trust')
  return (f'warning: --insecure_allow_public: plaintext TFF worker on '
          f'{bind_address}, with no authentication; firewall the port')




def connection_failure_cause(details: str) -> str:
  """The cause in gRPC's 'failed to connect ...; last error: CODE: addr: X'."""
  match = re.search(r'last error: [A-Z_]+: (?:ipv[46]:\S+?: )?(.*)', details)
  return ' '.join((match.group(1) if match else details).split())


def explain_connection_failure(cause: str,
                               client: ClientTls | None) -> str | None:
  """Says which TLS setting a failed connection points to, if any.

  Args:
    cause: `connection_failure_cause` of an UNAVAILABLE call's details.
    client: The coordinator's TLS settings; None for plaintext.

  Returns:
    One sentence, or None when the failure does not look like TLS.
  """
  if 'WRONG_VERSION_NUMBER' in cause:
    return ('TLS handshake failed: the worker does not speak TLS (started '
            f'without --tls_cert?) ({cause})')
  if 'Ssl handshake failed' in cause or 'CERTIFICATE_VERIFY_FAILED' in cause:
    return ('TLS handshake failed: the worker\'s certificate is not signed '
            'by --worker_tls_ca or does not name the host in --workers '
            f'({cause})')
  if cause != 'Socket closed':
    return None
  if client is None:
    return ('the worker closed the connection: if it runs with TLS, give '
            '--worker_tls_ca, --worker_tls_cert and --worker_tls_key')
  if client.certificate_chain is None:
    return ('the worker refused the TLS handshake: it requires a client '
            'certificate (--worker_tls_cert and --worker_tls_key)')
  return ('the worker refused the TLS handshake: --worker_tls_cert is not '
          'signed by its --tls_client_ca, or is not a client certificate')
