"""Mutual TLS for remote workers: certificates from the helper, the TLS front
that forwards TFF's executor service, refused clients, and bad files."""

from concurrent import futures
import datetime
import json
import os
import time

from cryptography import x509
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from cryptography.hazmat.primitives import serialization
import grpc
import numpy as np
import portpicker
import pytest

from tests import helpers
from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import regression
from tff_pipeline.runtime import certificates
from tff_pipeline.runtime import tls
from tff_pipeline.runtime import tls_front
from tff_pipeline.runtime import workers
from tff_pipeline.training import loop

SPEC = regression.RegressionSpec(num_clients=5, examples_per_client=20,
                                 noise_std=0.3, size_exponent=1.0, seed=3)
CONNECT_TIMEOUT = 2.0


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
  """Files made by `make_worker_certs`, plus a coordinator of another CA."""
  directory = tmp_path_factory.mktemp('tls') / 'certs'
  made = helpers.run_binary('experiments.make_worker_certs',
                            f'--output_dir={directory}',
                            '--worker_hosts=localhost,127.0.0.1')
  assert made.returncode == 0, made.stderr
  other_ca = certificates.make_ca('another CA')
  other = certificates.issue(other_ca, 'intruder', client=True)
  certificates.write_issued(str(directory), 'intruder', other)
  return directory


def _client(certs, name='coordinator', ca='ca.pem'):
  return tls.ClientTls.from_flags(
      str(certs / ca), name and str(certs / f'{name}.pem'),
      name and str(certs / f'{name}.key'))


@pytest.fixture(scope='module')
def tls_workers(certs):
  before = helpers.worker_binary_pids()
  args = [f'--tls_cert={certs / "worker.pem"}',
          f'--tls_key={certs / "worker.key"}',
          f'--tls_client_ca={certs / "ca.pem"}']
  pool = [helpers.RunWorker(portpicker.pick_unused_port(), *args)
          for _ in range(2)]
  yield pool
  for worker in pool:
    worker.stop()
  assert workers.wait_until(
      lambda: not helpers.leaked_worker_pids(before), timeout=10)


@pytest.fixture(scope='module')
def task():
  return tasks.build_regression_task(regression.make_regression_shards(SPEC))


def _config(root):
  return config_lib.TrainingConfig(
      experiment_name='tls', root_output_dir=str(root), total_rounds=3,
      clients_per_round=5, client_batch_size=-1,
      client_optimizer=config_lib.OptimizerConfig(learning_rate=0.2),
      rounds_per_checkpoint=3, seed=1)


def test_helper_writes_a_ca_worker_and_coordinator_with_safe_modes(certs):
  assert os.stat(certs).st_mode & 0o777 == 0o700
  for name in ('ca', 'worker', 'coordinator'):
    assert os.stat(certs / f'{name}.key').st_mode & 0o777 == 0o600
    assert os.stat(certs / f'{name}.pem').st_mode & 0o777 == 0o644
  ca = x509.load_pem_x509_certificate((certs / 'ca.pem').read_bytes())
  worker = x509.load_pem_x509_certificate((certs / 'worker.pem').read_bytes())
  worker.verify_directly_issued_by(ca)
  names = worker.extensions.get_extension_for_class(
      x509.SubjectAlternativeName).value
  assert names.get_values_for_type(x509.DNSName) == ['localhost']
  assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
      '127.0.0.1']
  with pytest.raises(errors.OutputError, match='exists; not overwriting'):
    certificates.write_private(str(certs / 'worker.key'), b'')
  assert certificates.load_ca(str(certs)).certificate == ca


def test_two_tls_workers_give_bitwise_the_local_model(task, tls_workers, certs,
                                                      tmp_path, tff_runtime):
  algorithm = loop.build_algorithm(task, _config(tmp_path / 'build'))
  local = loop.run_federated(task, _config(tmp_path / 'local'),
                             algorithm=algorithm, runtime=tff_runtime,
                             progress=False)
  remote = loop.run_federated(task, _config(tmp_path / 'remote'),
                              algorithm=algorithm,
                              workers=[w.address for w in tls_workers],
                              worker_tls=_client(certs), progress=False)
  assert len(remote.final_weights) == len(local.final_weights) == 2
  for a, b in zip(remote.final_weights, local.final_weights):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('client, message', [
    (dict(name=None), 'it requires a client certificate'),
    (dict(name='intruder'), 'not signed by its --tls_client_ca'),
    (dict(name='worker'), 'or is not a client certificate'),
    (None, 'if it runs with TLS, give --worker_tls_ca'),
])
def test_refused_coordinator_fails_in_time_and_the_worker_serves_on(
    certs, tls_workers, client, message):
  worker = tls_workers[0]
  start = time.monotonic()
  with pytest.raises(errors.RuntimeUnavailableError) as raised:
    runtime_lib.Runtime([worker.address], connect_timeout=CONNECT_TIMEOUT,
                        tls=client and _client(certs, **client))
  assert time.monotonic() - start < CONNECT_TIMEOUT + 5
  text = str(raised.value)
  assert text.startswith(f'TFF worker {worker.address} is not reachable '
                         f'after {CONNECT_TIMEOUT:.0f} s: '), text
  assert message in text and '\n' not in text
  with runtime_lib.Runtime([worker.address], tls=_client(certs)) as good:
    assert good.addresses == [worker.address]
  assert worker.process.poll() is None


@pytest.mark.slow  # starts a third worker process
def test_tls_coordinator_and_a_plaintext_worker_say_so(certs):
  plain = helpers.RunWorker(portpicker.pick_unused_port())
  try:
    with pytest.raises(errors.RuntimeUnavailableError,
                       match='the worker does not speak TLS'):
      runtime_lib.Runtime([plain.address], connect_timeout=1,
                          tls=_client(certs))
  finally:
    plain.stop()


def test_coordinator_binary_prints_one_line_without_traceback(certs,
                                                              tls_workers,
                                                              tmp_path):
  run = helpers.run_binary_in_process(
      'experiments.train_regression', '--experiment_name=refused',
      f'--root_output_dir={tmp_path}', '--total_rounds=1', '--progress=false',
      f'--workers={tls_workers[1].address}', '--worker_connect_timeout=2',
      f'--worker_tls_ca={certs / "ca.pem"}')
  assert run.returncode == errors.RuntimeUnavailableError.exit_code
  assert 'Traceback' not in run.stderr
  error = [l for l in run.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1, run.stderr
  assert f'TFF worker {tls_workers[1].address} is not reachable' in error[0]
  assert 'requires a client certificate' in error[0]


def _executor_methods():
  service = tls_front.EXECUTOR_SERVICE
  return [f'/{service.full_name}/{m.name}' for m in service.methods]


@pytest.mark.parametrize('credentials', ['none', 'no_cert', 'other_ca'])
def test_raw_client_without_a_valid_certificate_reaches_no_method(
    certs, tls_workers, credentials):
  address = tls_workers[0].address
  if credentials == 'none':
    channel = grpc.insecure_channel(address)
  else:
    client = _client(certs, None if credentials == 'no_cert' else 'intruder')
    channel = grpc.secure_channel(address, client.credentials())
  with channel:
    methods = _executor_methods()
    assert len(methods) == 8
    for method in methods:
      with pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(method)(b'', timeout=5)
      assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, method


def test_valid_client_reaches_only_the_executor_service(certs, tls_workers):
  with grpc.secure_channel(tls_workers[0].address,
                           _client(certs).credentials()) as channel:
    with pytest.raises(grpc.RpcError) as raised:
      channel.unary_unary('/grpc.health.v1.Health/Check')(b'', timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # An empty Dispose reaches the worker through the front: the answer (or
    # the worker's own error) is not a connection failure.
    dispose = _executor_methods()[6]
    assert dispose.endswith('/Dispose')
    try:
      assert channel.unary_unary(dispose)(b'', timeout=5) == b''
    except grpc.RpcError as e:
      assert e.code() not in (grpc.StatusCode.UNAVAILABLE,
                              grpc.StatusCode.UNIMPLEMENTED), e


def _write(path, data):
  path.write_bytes(data)
  return str(path)


@pytest.fixture(scope='module')
def bad_files(certs, tmp_path_factory):
  directory = tmp_path_factory.mktemp('bad')
  ca = certificates.load_ca(str(certs))
  past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
      days=30)
  expired = certificates.issue(ca, 'old', server_hosts=['localhost'],
                               client=True, days=10, now=past)
  future = certificates.issue(
      ca, 'future', client=True, days=10,
      now=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
          days=2))
  encrypted = future.key.private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
      serialization.BestAvailableEncryption(b'secret'))
  return {
      'future_cert': _write(directory / 'future.pem', future.certificate_pem()),
      'future_key': _write(directory / 'future.key', future.key_pem()),
      'encrypted_key': _write(directory / 'encrypted.key', encrypted),
      'expired_cert': _write(directory / 'old.pem',
                             expired.certificate_pem()),
      'expired_key': _write(directory / 'old.key', expired.key_pem()),
      'not_pem': _write(directory / 'junk.pem', b'hello'),
      'missing': str(directory / 'missing.pem'),
      'directory': str(directory),
  }


def _server_files(certs, bad_files, **changes):
  files = dict(cert=str(certs / 'worker.pem'), key=str(certs / 'worker.key'),
               client_ca=str(certs / 'ca.pem'))
  files.update({k: bad_files.get(v, v) for k, v in changes.items()})
  return files


@pytest.mark.parametrize('changes, message', [
    (dict(cert='missing'), r'--tls_cert=\S+missing.pem: cannot read it '
                           r'\(No such file or directory\)'),
    (dict(client_ca='directory'), r'--tls_client_ca=\S+: cannot read it '
                                  r'\(Is a directory\)'),
    (dict(cert='not_pem'), r'--tls_cert=\S+junk.pem holds no PEM certificate'),
    (dict(key='not_pem'), r'--tls_key=\S+junk.pem holds no PEM private key'),
    (dict(cert='expired_cert', key='expired_key'),
     r'--tls_cert=\S+old.pem: certificate CN=old,O=tff_pipeline expired on'),
    (dict(key='expired_key'),
     r'--tls_key=\S+old.key is not the private key of --tls_cert=\S+worker'),
    (dict(key='encrypted_key'), r'--tls_key=\S+encrypted.key is encrypted'),
    (dict(client_ca='future_cert'),
     r'--tls_client_ca=\S+future.pem: certificate CN=future,O=tff_pipeline '
     r'is not valid before'),
    (dict(client_ca=''), r'missing --tls_client_ca'),
])
def test_bad_worker_files_name_the_flag_and_file(certs, bad_files, changes,
                                                 message):
  with pytest.raises(errors.UsageError, match=message):
    tls.ServerTls.from_files(**_server_files(certs, bad_files, **changes))


@pytest.mark.parametrize('ca, cert, key, message', [
    ('ca.pem', 'expired_cert', 'expired_key', r'--worker_tls_cert=\S+old.pem:'
                                               ' certificate .* expired on'),
    ('ca.pem', 'coordinator.pem', 'worker.key',
     r'--worker_tls_key=\S+worker.key is not the private key'),
    ('missing', '', '', r'--worker_tls_ca=\S+missing.pem: cannot read'),
    ('ca.pem', 'coordinator.pem', '', r'go together; got only --worker_tls_c'),
    ('', 'coordinator.pem', 'coordinator.key', 'needs --worker_tls_ca'),
])
def test_bad_coordinator_files_name_the_flag_and_file(certs, bad_files, ca,
                                                      cert, key, message):
  def path(name):
    return bad_files.get(name) or (name and str(certs / name))
  with pytest.raises(errors.UsageError, match=message):
    tls.ClientTls.from_flags(path(ca), path(cert), path(key))


@pytest.mark.slow  # The message is also checked in-process, above.
def test_worker_binary_with_a_mismatched_key_exits_2(certs):
  run = helpers.run_binary(
      'experiments.run_worker', '--port=1',
      f'--tls_cert={certs / "worker.pem"}',
      f'--tls_key={certs / "coordinator.key"}',
      f'--tls_client_ca={certs / "ca.pem"}', '--bind_address=192.0.2.1')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      f'error: --tls_key={certs / "coordinator.key"} is not the private key '
      f'of --tls_cert={certs / "worker.pem"}')


def test_public_plaintext_worker_is_a_usage_error_before_binding():
  # 192.0.2.1 (TEST-NET-1) is no address of this machine: if the check came
  # after binding, the error would be a failed bind instead.
  run = helpers.run_binary('experiments.run_worker', '--port=1',
                           '--bind_address=192.0.2.1')
  assert run.returncode == 2
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('error: --bind_address=192.0.2.1 is reachable from '
                         'other machines, and without TLS'), last
  assert '--insecure_allow_public' in last


@pytest.mark.parametrize('address, use_tls, allow, expected', [
    ('127.0.0.1', False, False, None),
    ('::1', False, False, None),
    ('10.0.0.5', True, False, None),
    ('10.0.0.5', False, True, 'warning: --insecure_allow_public'),
    ('0.0.0.0', False, True, 'warning: --insecure_allow_public'),
])
def test_bind_policy(address, use_tls, allow, expected):
  warning = tls.check_bind_policy(address, tls=use_tls, allow_public=allow)
  if expected is None:
    assert warning is None
  else:
    assert warning.startswith(expected)


@pytest.mark.parametrize('address', ['0.0.0.0', '::', '10.0.0.5',
                                     '::ffff:10.0.0.5'])
def test_bind_policy_refuses_public_plaintext(address):
  with pytest.raises(errors.UsageError, match='reachable from other machines'):
    tls.check_bind_policy(address, tls=False, allow_public=False)


def test_front_refuses_a_port_in_use(certs, tls_workers):
  server_tls = tls.ServerTls.from_files(
      str(certs / 'worker.pem'), str(certs / 'worker.key'),
      str(certs / 'ca.pem'))
  with pytest.raises(errors.RuntimeUnavailableError,
                     match=f'cannot listen on 127.0.0.1:{tls_workers[0].port}'):
    tls_front.TlsFront('127.0.0.1:1', '127.0.0.1', tls_workers[0].port,
                       server_tls)


def test_tls_without_remote_workers_is_a_usage_error(certs):
  with pytest.raises(errors.UsageError, match='apply to remote --workers'):
    runtime_lib.Runtime([], tls=_client(certs))



def _echo_service():
  """A service with one method of each streaming kind, built at run time."""

  proto = descriptor_pb2.FileDescriptorProto(
      name='tls_test_echo.proto', package='tls_test', syntax='proto3')
  proto.message_type.add(name='Blob')
  service = proto.service.add(name='Echo')
  for name, client_streaming, server_streaming in (
      ('Unary', False, False), ('ServerStream', False, True),
      ('ClientStream', True, False), ('BothStream', True, True)):
    service.method.add(name=name, input_type='.tls_test.Blob',
                       output_type='.tls_test.Blob',
                       client_streaming=client_streaming,
                       server_streaming=server_streaming)
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return pool.FindServiceByName('tls_test.Echo')


class _EchoUpstream(grpc.GenericRpcHandler):
  """Answers each kind with the request bytes reversed; 'fail' aborts."""

  def service(self, details):
    name = details.method.rsplit('/', 1)[1]

    def check(request, context):
      if request == b'fail':
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, 'upstream says no')
      context.set_trailing_metadata([('echo-method', name)])
      return request[::-1]

    return {
        'Unary': grpc.unary_unary_rpc_method_handler(check),
        'ServerStream': grpc.unary_stream_rpc_method_handler(
            lambda r, c: iter([check(r, c)] * 2)),
        'ClientStream': grpc.stream_unary_rpc_method_handler(
            lambda rs, c: check(b''.join(rs), c)),
        'BothStream': grpc.stream_stream_rpc_method_handler(
            lambda rs, c: (check(r, c) for r in rs)),
    }.get(name)


def test_front_forwards_every_kind_of_method_as_bytes(certs):
  upstream = grpc.server(futures.ThreadPoolExecutor(4),
                         handlers=[_EchoUpstream()])
  upstream_port = upstream.add_insecure_port('127.0.0.1:0')
  upstream.start()
  server_tls = tls.ServerTls.from_files(
      str(certs / 'worker.pem'), str(certs / 'worker.key'),
      str(certs / 'ca.pem'))
  port = portpicker.pick_unused_port()
  try:
    with tls_front.TlsFront(f'127.0.0.1:{upstream_port}', '127.0.0.1', port,
                            server_tls, service=_echo_service()), (
        grpc.secure_channel(f'127.0.0.1:{port}',
                            _client(certs).credentials())) as channel:
      unary = channel.unary_unary('/tls_test.Echo/Unary')
      response, call = unary.with_call(b'abc', timeout=10)
      assert response == b'cba'
      assert ('echo-method', 'Unary') in call.trailing_metadata()
      assert unary(b'abc') == b'cba'  # No deadline at all.
      assert list(channel.unary_stream('/tls_test.Echo/ServerStream')(
          b'ab', timeout=10)) == [b'ba', b'ba']
      assert channel.stream_unary('/tls_test.Echo/ClientStream')(
          iter([b'a', b'b', b'c']), timeout=10) == b'cba'
      assert list(channel.stream_stream('/tls_test.Echo/BothStream')(
          iter([b'ab', b'cd']), timeout=10)) == [b'ba', b'dc']
      with pytest.raises(grpc.RpcError) as raised:
        unary(b'fail', timeout=10)
      assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
      assert raised.value.details() == 'upstream says no'
      with pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary('/tls_test.Echo/Other')(b'', timeout=10)
      assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
  finally:
    upstream.stop(None)


@pytest.mark.slow  # Paper CNN rounds through two TLS workers.
def test_tls_cost_benchmark_runs_and_paths_agree(tmp_path):
  path = tmp_path / 'tls_cost.json'
  run = helpers.run_binary('benchmarks.tls_cost', '--rounds=1',
                           f'--json={path}', timeout=1200)
  assert run.returncode == 0, run.stderr
  result = json.loads(path.read_text())
  assert result['bitwise_equal_rounds'] is True
  assert len(result['round_seconds']['tls']) == 1
  medians = result['round_seconds_median']
  assert result['tls_over_plaintext'] == pytest.approx(
      medians['tls'] / medians['plaintext'])
