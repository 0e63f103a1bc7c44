"""The local TFF worker listens only where we tell it (LD_PRELOAD bind shim).

Listening sockets are read from /proc/net/tcp{,6} and matched to the worker
by socket inode (/proc/PID/fd), so each check is about that very process.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline import errors
from tff_pipeline import runtime as runtime_lib
from tff_pipeline.runtime import bind_shim
from tff_pipeline.runtime import workers

pytestmark = pytest.mark.skipif(
    not os.path.exists('/proc/net/tcp'), reason='needs Linux /proc/net')

_TCP_LISTEN = '0A'
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def _sum(values):
  return tff.federated_sum(values)


def _decode_proc_address(hex_address: str) -> IPAddress:
  """Decodes /proc/net/tcp{,6} addresses (32-bit words in host order)."""
  raw = bytes.fromhex(hex_address)
  packed = b''.join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
  address = ipaddress.ip_address(packed)
  if address.version == 6 and address.ipv4_mapped is not None:
    return address.ipv4_mapped
  return address


def _socket_inodes(pid: int) -> set[str]:
  inodes = set()
  for fd in os.listdir(f'/proc/{pid}/fd'):
    try:
      target = os.readlink(f'/proc/{pid}/fd/{fd}')
    except OSError:
      continue
    if target.startswith('socket:['):
      inodes.add(target[len('socket:['):-1])
  return inodes


def listening_addresses(pid: int, port: int) -> set[IPAddress]:
  """Addresses on which process `pid` listens for TCP on `port`.

  IPv4-mapped IPv6 addresses are reported as IPv4; a dual-stack wildcard
  socket shows as `::`.
  """
  inodes = _socket_inodes(pid)
  found = set()
  for table in ('/proc/net/tcp', '/proc/net/tcp6'):
    if not os.path.exists(table):
      continue
    with open(table) as f:
      next(f)
      for line in f:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        host, port_hex = local.split(':')
        if (state == _TCP_LISTEN and int(port_hex, 16) == port
            and inode in inodes):
          found.add(_decode_proc_address(host))
  return found


def wait_listening(worker: workers.WorkerProcess) -> set[IPAddress]:
  """Waits until the worker listens (or exits); returns its addresses."""
  workers.wait_until(
      lambda: not worker.is_running()
      or listening_addresses(worker.pid, worker.port),
      timeout=30)
  assert worker.is_running(), (
      f'worker exited with {worker.returncode()}: {worker.log_tail()}')
  return listening_addresses(worker.pid, worker.port)


def connect_error(host: str, port: int) -> int | None:
  """0 if a TCP connection to host:port succeeds, else its errno."""
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  with socket.socket(family, socket.SOCK_STREAM) as s:
    s.settimeout(5)
    return s.connect_ex((host, port))


def non_loopback_ipv4() -> str | None:
  """An IPv4 address of this machine outside 127/8, or None."""
  try:
    out = subprocess.run(['ip', '-4', '-o', 'addr', 'show'],
                         capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
      address = ipaddress.ip_interface(line.split()[3]).ip
      if not address.is_loopback:
        return str(address)
  except (OSError, subprocess.SubprocessError, IndexError, ValueError):
    pass
  # Without `ip`: the source address the kernel would use for a public IP.
  # A UDP connect sends no packet.
  try:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
      s.connect(('192.0.2.1', 9))
      address = ipaddress.ip_address(s.getsockname()[0])
  except OSError:
    return None
  return None if address.is_loopback or address.is_unspecified else str(
      address)


def has_ipv6_loopback() -> bool:
  try:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
      s.bind(('::1', 0))
    return True
  except OSError:
    return False


@pytest.fixture(scope='module')
def shim_path() -> str:
  path = bind_shim.ensure_built()
  assert path is not None, 'the bind shim could not be built (see log)'
  return path


@pytest.fixture(scope='module')
def public_ip() -> str:
  address = non_loopback_ipv4()
  if address is None:
    pytest.skip('this machine has no non-loopback IPv4 address')
  return address


def test_shim_builds_once_and_rebuilds_when_stale(tmp_path):
  path = bind_shim.ensure_built(str(tmp_path))
  assert path == str(tmp_path / bind_shim.LIBRARY_NAME)
  symbols = subprocess.run(['nm', '-D', '--defined-only', path],
                           capture_output=True, text=True, check=True).stdout
  assert {'bind', 'listen'} <= {line.split()[-1]
                                for line in symbols.splitlines()}
  inode = os.stat(path).st_ino
  assert bind_shim.ensure_built(str(tmp_path)) == path
  assert os.stat(path).st_ino == inode  # Cached: not rebuilt.
  (tmp_path / (bind_shim.LIBRARY_NAME + '.sha256')).write_text('stale\n')
  assert bind_shim.ensure_built(str(tmp_path)) == path
  assert os.stat(path).st_ino != inode  # Rebuilt and renamed into place.


def test_no_compiler_gives_none_and_a_warning(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv('CC', str(tmp_path / 'no-such-cc'))
  assert bind_shim.ensure_built(str(tmp_path)) is None
  assert 'no C compiler found' in caplog.text
  assert not (tmp_path / bind_shim.LIBRARY_NAME).exists()


def test_worker_started_without_the_shim_warns_it_listens_everywhere(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(bind_shim, 'ensure_built', lambda: None)
  with workers.WorkerProcess(log_path=str(tmp_path / 'w.log')) as worker:
    assert wait_listening(worker) == {ipaddress.ip_address('::')}
  assert 'listening on all interfaces' in caplog.text


def test_runtime_worker_listens_only_on_loopback_and_computes(shim_path):
  with runtime_lib.Runtime() as runtime:
    worker = runtime.local_worker
    assert wait_listening(worker) == {ipaddress.ip_address('127.0.0.1')}
    with open(f'/proc/{worker.pid}/maps') as f:
      assert shim_path in f.read()
    assert _sum([1.0, 2.0, 3.5]) == pytest.approx(6.5)
  assert not worker.is_running()


def test_default_worker_is_unreachable_from_other_addresses(public_ip):
  with workers.WorkerProcess() as worker:
    wait_listening(worker)
    assert connect_error('127.0.0.1', worker.port) == 0
    assert connect_error(public_ip, worker.port) == errno.ECONNREFUSED
    if has_ipv6_loopback():
      assert connect_error('::1', worker.port) == errno.ECONNREFUSED


def test_bind_address_none_listens_on_the_wildcard(public_ip):
  with workers.WorkerProcess(bind_address=None) as worker:
    assert wait_listening(worker) == {ipaddress.ip_address('::')}
    with open(f'/proc/{worker.pid}/environ', 'rb') as f:
      assert bind_shim.ENV_VAR.encode() not in f.read()
    assert worker.address == f'localhost:{worker.port}'
    assert connect_error('127.0.0.1', worker.port) == 0
    assert connect_error(public_ip, worker.port) == 0


def test_explicit_non_loopback_address_is_the_only_one(public_ip):
  with workers.WorkerProcess(bind_address=public_ip) as worker:
    assert wait_listening(worker) == {ipaddress.ip_address(public_ip)}
    assert worker.address == f'{public_ip}:{worker.port}'
    assert connect_error(public_ip, worker.port) == 0
    assert connect_error('127.0.0.1', worker.port) == errno.ECONNREFUSED


def test_explicit_ipv6_loopback():
  if not has_ipv6_loopback():
    pytest.skip('IPv6 loopback (::1) is not available')
  with workers.WorkerProcess(bind_address='::1') as worker:
    assert wait_listening(worker) == {ipaddress.ip_address('::1')}
    assert worker.address == f'[::1]:{worker.port}'
    assert connect_error('::1', worker.port) == 0
    assert connect_error('127.0.0.1', worker.port) == errno.ECONNREFUSED


def test_existing_ld_preload_is_kept(shim_path):
  # libm is already a dependency of the worker, so preloading it is inert.
  with workers.WorkerProcess(
      bind_address='127.0.0.1',
      extra_env={'LD_PRELOAD': 'libm.so.6'}) as worker:
    assert wait_listening(worker) == {ipaddress.ip_address('127.0.0.1')}
    with open(f'/proc/{worker.pid}/environ', 'rb') as f:
      environ = dict(item.split(b'=', 1)
                     for item in f.read().split(b'\0') if b'=' in item)
  assert environ[b'LD_PRELOAD'] == f'libm.so.6:{shim_path}'.encode()
  assert environ[bind_shim.ENV_VAR.encode()] == b'127.0.0.1'


def test_unusable_address_fails_instead_of_listening_everywhere(
    tmp_path, shim_path):
  with open('/proc/sys/net/ipv4/ip_nonlocal_bind') as f:
    if f.read().strip() != '0':
      pytest.skip('net.ipv4.ip_nonlocal_bind allows binding foreign addresses')
  log = tmp_path / 'worker.log'
  # 203.0.113.0/24 is TEST-NET-3: not an address of this machine.
  with workers.WorkerProcess(bind_address='203.0.113.77',
                             log_path=str(log)) as worker:
    assert workers.wait_until(lambda: not worker.is_running(), timeout=30)
  text = log.read_text()
  assert 'bind shim' in text and 'not falling back' in text
  assert 'Cannot assign requested address' in text


_PROBE = r"""
import json, socket

def listen_on(family, address=None, v6only=None):
  with socket.socket(family, socket.SOCK_STREAM) as s:
    try:
      if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
      if address is not None:
        s.bind(address)
      s.listen()
      return s.getsockname()[0]
    except OSError as e:
      return e.errno

print(json.dumps({
    'v4 0.0.0.0': listen_on(socket.AF_INET, ('0.0.0.0', 0)),
    'v4 127.0.0.2': listen_on(socket.AF_INET, ('127.0.0.2', 0)),
    'v4 unbound': listen_on(socket.AF_INET),
    'v6 ::': listen_on(socket.AF_INET6, ('::', 0)),
    'v6 :: v6only': listen_on(socket.AF_INET6, ('::', 0), v6only=1),
    'v6 ::ffff:0.0.0.0': listen_on(socket.AF_INET6, ('::ffff:0.0.0.0', 0)),
    'v6 unbound': listen_on(socket.AF_INET6),
}))
"""


@pytest.mark.parametrize('target, expected', [
    ('127.0.0.1', {
        'v4 0.0.0.0': '127.0.0.1',
        'v4 127.0.0.2': '127.0.0.2',  # Not a wildcard: untouched.
        'v4 unbound': '127.0.0.1',
        'v6 ::': '::ffff:127.0.0.1',
        'v6 :: v6only': '::ffff:127.0.0.1',  # V6ONLY turned off to allow it.
        'v6 ::ffff:0.0.0.0': '::ffff:127.0.0.1',
        'v6 unbound': '::ffff:127.0.0.1',
    }),
    ('::1', {
        'v4 0.0.0.0': errno.EAFNOSUPPORT,
        'v4 127.0.0.2': '127.0.0.2',
        'v4 unbound': errno.EAFNOSUPPORT,
        'v6 ::': '::1',
        'v6 :: v6only': '::1',
        'v6 ::ffff:0.0.0.0': '::1',
        'v6 unbound': '::1',
    }),
    ('not-an-address', {
        'v4 0.0.0.0': errno.EINVAL,
        'v4 127.0.0.2': '127.0.0.2',
        'v4 unbound': errno.EINVAL,
        'v6 ::': errno.EINVAL,
        'v6 :: v6only': errno.EINVAL,
        'v6 ::ffff:0.0.0.0': errno.EINVAL,
        'v6 unbound': errno.EINVAL,
    }),
    ('', {  # Empty means unset: everything passes through.
        'v4 0.0.0.0': '0.0.0.0',
        'v4 127.0.0.2': '127.0.0.2',
        'v4 unbound': '0.0.0.0',
        'v6 ::': '::',
        'v6 :: v6only': '::',
        'v6 ::ffff:0.0.0.0': '::ffff:0.0.0.0',
        'v6 unbound': '::',
    }),
])
def test_shim_rewrites_only_wildcard_binds(shim_path, target, expected):
  if not has_ipv6_loopback():
    pytest.skip('needs IPv6')
  env = dict(os.environ, LD_PRELOAD=shim_path,
             **{bind_shim.ENV_VAR: target})
  result = subprocess.run([sys.executable, '-c', _PROBE], env=env,
                          capture_output=True, text=True, timeout=60,
                          check=True)
  assert json.loads(result.stdout) == expected
  if target == 'not-an-address':
    assert 'refusing a wildcard bind' in result.stderr


def test_bind_address_must_be_an_ip_literal():
  with pytest.raises(errors.UsageError, match="'localhost' is not an IPv4"):
    workers.WorkerProcess(bind_address='localhost')


@pytest.mark.parametrize('bind_address, address', [
    (None, 'localhost:1234'),
    ('127.0.0.1', '127.0.0.1:1234'),
    ('0.0.0.0', 'localhost:1234'),
    ('::', 'localhost:1234'),
    ('::1', '[::1]:1234'),
    ('::ffff:10.1.2.3', '10.1.2.3:1234'),
])
def test_address_connects_to_the_bind_address(bind_address, address):
  worker = workers.WorkerProcess(1234, bind_address=bind_address)
  assert worker.address == address
