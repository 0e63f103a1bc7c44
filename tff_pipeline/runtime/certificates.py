"""A small certificate authority for mutual TLS between coordinator and workers.

`python -m experiments.make_worker_certs` uses it to write, into one
directory:

  * `ca.pem` / `ca.key`: a self-signed CA (ECDSA P-256). Keep `ca.key` off
    the workers; it signs every other certificate.
  * `<worker>.pem` / `<worker>.key`: a server certificate whose subject
    alternative names are the worker's host names and IP addresses (the
    coordinator checks the address in `--workers` against them).
  * `<coordinator>.pem` / `<coordinator>.key`: a client certificate that
    workers accept because the same CA signed it.

Private keys are written with mode 0600 and never overwritten; certificates
with 0644. The key usages follow RFC 5280 (CA: keyCertSign; server:
serverAuth; client: clientAuth).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

from tff_pipeline import errors

CA_CERT = 'ca.pem'
CA_KEY = 'ca.key'
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class Issued:
  """A certificate and its private key."""

  certificate: x509.Certificate
  key: ec.EllipticCurvePrivateKey

  def certificate_pem(self) -> bytes:
    return self.certificate.public_bytes(serialization.Encoding.PEM)

  def key_pem(self) -> bytes:
    return self.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
  return x509.Name([
      x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'tff_pipeline'),
      x509.NameAttribute(NameOID.COMMON_NAME, common_name),
  ])


def _validity(days: float, now: datetime.datetime | None,
              ) -> tuple[datetime.datetime, datetime.datetime]:
  now = now or datetime.datetime.now(datetime.timezone.utc)
  return now - _CLOCK_SKEW, now + datetime.timedelta(days=days)


def subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
  """DNS names and IP addresses for a server certificate.

  Raises:
    UsageError: no hosts, or a host that is neither an IP address nor a
      DNS name.
  """
  names: list[x509.GeneralName] = []
  for host in hosts:
    host = host.strip()
    try:
      names.append(x509.IPAddress(ipaddress.ip_address(host)))
      continue
    except ValueError:
      pass
    labels = host.rstrip('.').split('.')
    if not host or not all(
        label and len(label) <= 63 and label.replace('-', '').isalnum()
        and label.isascii() for label in labels):
      raise errors.UsageError(
          f'--worker_hosts: {host!r} is neither an IP address nor a DNS name')
    names.append(x509.DNSName(host))
  if not names:
    raise errors.UsageError(
        '--worker_hosts: give the host names and IP addresses the '
        'coordinator will use in --workers')
  return names


def make_ca(common_name: str = 'tff_pipeline worker CA', *, days: float = 3650,
            now: datetime.datetime | None = None) -> Issued:
  """A self-signed CA certificate that may sign leaf certificates only."""
  key = ec.generate_private_key(ec.SECP256R1())
  not_before, not_after = _validity(days, now)
  name = _name(common_name)
  certificate = (
      x509.CertificateBuilder()
      .subject_name(name).issuer_name(name)
      .public_key(key.public_key())
      .serial_number(x509.random_serial_number())
      .not_valid_before(not_before).not_valid_after(not_after)
      .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                     critical=True)
      .add_extension(x509.KeyUsage(
          digital_signature=False, content_commitment=False,
          key_encipherment=False, data_encipherment=False,
          key_agreement=False, key_cert_sign=True, crl_sign=True,
          encipher_only=False, decipher_only=False), critical=True)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(
          key.public_key()), critical=False)
      .sign(key, hashes.SHA256()))
  return Issued(certificate, key)


def issue(ca: Issued, common_name: str, *, server_hosts: Sequence[str] = (),
          client: bool = False, days: float = 365,
          now: datetime.datetime | None = None) -> Issued:
  """A leaf certificate signed by `ca`.

  Args:
    ca: The signing CA.
    common_name: Subject CN (shown in logs and errors).
    server_hosts: Host names / IPs for a server (worker) certificate; empty
      for a client-only certificate.
    client: Whether the certificate may authenticate a TLS client.
    days: Validity from now (or from `now`); negative gives an expired one.
    now: Start of validity (default: the current time).
  """
  key = ec.generate_private_key(ec.SECP256R1())
  not_before, not_after = _validity(days, now)
  usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else []) + (
      [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
  builder = (
      x509.CertificateBuilder()
      .subject_name(_name(common_name))
      .issuer_name(ca.certificate.subject)
      .public_key(key.public_key())
      .serial_number(x509.random_serial_number())
      .not_valid_before(min(not_before, not_after))
      .not_valid_after(not_after)
      .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                     critical=True)
      .add_extension(x509.KeyUsage(
          digital_signature=True, content_commitment=False,
          key_encipherment=False, data_encipherment=False,
          key_agreement=True, key_cert_sign=False, crl_sign=False,
          encipher_only=False, decipher_only=False), critical=True)
      .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
      .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
          ca.certificate.public_key()), critical=False))
  if server_hosts:
    builder = builder.add_extension(
        x509.SubjectAlternativeName(subject_alternative_names(server_hosts)),
        critical=False)
  return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_private(path: str, data: bytes) -> None:
  """Writes a new file readable only by its owner (0600); never overwrites.

  Raises:
    OutputError: the file exists or cannot be written.
  """
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  except FileExistsError:
    raise errors.OutputError(
        f'{path} exists; not overwriting a private key (move it away, or '
        'choose another name)') from None
  except OSError as e:
    raise errors.OutputError(f'cannot write {path}: {e.strerror}') from None
  with os.fdopen(fd, 'wb') as f:
    f.write(data)


def write_public(path: str, data: bytes) -> None:
  """Writes a certificate (mode 0644), replacing an older one atomically."""
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except OSError as e:
    raise errors.OutputError(f'cannot write {path}: {e.strerror}') from None


def write_issued(directory: str, name: str, issued: Issued) -> tuple[str, str]:
  """Writes `<name>.key` (0600, new) then `<name>.pem`; returns both paths."""
  key_path = os.path.join(directory, f'{name}.key')
  cert_path = os.path.join(directory, f'{name}.pem')
  write_private(key_path, issued.key_pem())
  write_public(cert_path, issued.certificate_pem())
  return cert_path, key_path


def load_ca(directory: str) -> Issued | None:
  """The CA in `directory` (`ca.pem` + `ca.key`), or None if there is none.

  Raises:
    UsageError: only one of the two files exists, or they cannot be read.
  """
  cert_path = os.path.join(directory, CA_CERT)
  key_path = os.path.join(directory, CA_KEY)
  present = [os.path.exists(p) for p in (cert_path, key_path)]
  if not any(present):
    return None
  if not all(present):
    missing = cert_path if not present[0] else key_path
    raise errors.UsageError(f'{missing} is missing, but its pair is there; '
                            'restore it or start a new --output_dir')
  try:
    with open(cert_path, 'rb') as f:
      certificate = x509.load_pem_x509_certificate(f.read())
    with open(key_path, 'rb') as f:
      key = serialization.load_pem_private_key(f.read(), password=None)
  except OSError as e:
    raise errors.UsageError(
        f'cannot read {e.filename}: {e.strerror}') from None
  except (ValueError, TypeError) as e:
    raise errors.UsageError(
        f'{cert_path} / {key_path} is not a usable CA: {e}') from None
  if not isinstance(key, ec.EllipticCurvePrivateKey):
    raise errors.UsageError(f'{key_path} is not an EC key made by this tool')
  return Issued(certificate, key)
