"""The notebooks run top to bottom, in small mode; Colab's local runtime.

Each notebook is executed with `nbclient` with `NOTEBOOK_SMALL=1`. A failing
cell fails the test; the executed notebook must contain at least one PNG, and
no TFF worker started by the kernel may outlive it.

- The teaching notebooks run on a kernel of the interpreter running the tests
  (a kernel spec written to a temporary directory, so a fresh clone needs no
  `ipykernel install`).
- `colab_quickstart.ipynb` runs on kernels imitating stock Colab's: venvs of
  Python 3.13 and 3.12 (pyenv) with only ipykernel and matplotlib from PyPI
  (no TensorFlow), Colab's environment variables, and `TFF_PIPELINE_VENV` at
  the prebuilt `.venv` so nothing is downloaded (slow: building a kernel venv
  alone takes 20-90 s).
- `make notebook` is started on a free port and checked over HTTP and the
  kernel websocket.
"""

import datetime
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import nbclient
from nbclient import exceptions as nbclient_exceptions
import nbformat
from jupyter_client import kernelspec
from jupyter_client import manager
import pytest

from tests import helpers
from tests import notebook_client_test

NOTEBOOK_DIR = os.path.join(helpers.REPO_ROOT, 'notebooks')
NOTEBOOKS = ['federated_mnist.ipynb', 'regression_lessons.ipynb']
QUICKSTART = 'colab_quickstart.ipynb'
KERNEL_NAME = 'tff_pipeline_test'
CELL_TIMEOUT_SECONDS = 600
# Set in the kernel's environment, so inherited by the TFF workers it starts:
# tells them apart from other processes' workers on the same machine.
MARKER_VARIABLE = 'TFF_PIPELINE_NOTEBOOK_TEST'


@pytest.fixture(scope='module')
def kernel_dir(tmp_path_factory):
  """A kernel spec running this interpreter's ipykernel, in a temp dir."""
  probe = subprocess.run(
      [sys.executable, '-c', 'import IPython, ipykernel.kernelapp'],
      capture_output=True, text=True, timeout=120)
  if probe.returncode != 0:
    last = (probe.stderr.strip().splitlines() or ['?'])[-1]
    pytest.fail(
        f'the notebook kernel cannot start with {sys.executable}: importing '
        f'IPython fails with "{last}". IPython 8.23+ needs '
        'typing_extensions>=4.6 (ipython/ipython#14389) but TFF 0.87 pins '
        'typing-extensions 4.5.0; pin ipython==8.22.2 in constraints.txt',
        pytrace=False)
  directory = tmp_path_factory.mktemp('kernels')
  spec_dir = directory / KERNEL_NAME
  spec_dir.mkdir()
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
               '{connection_file}'],
      'display_name': 'tff_pipeline (tests)',
      'language': 'python',
  }))
  return str(directory)


def _kernel_workers(marker: str) -> set[int]:
  """Running worker_binary processes whose environment carries `marker`."""
  return helpers.worker_pids_with_env(MARKER_VARIABLE, marker)


def _wait_for_no_workers(marker: str, timeout: float) -> set[int]:
  deadline = time.monotonic() + timeout
  while True:
    left = _kernel_workers(marker)
    if not left or time.monotonic() > deadline:
      return left
    time.sleep(0.2)


def _execute(path: str, kernel_name: str, kernel_dirs: list[str],
             env: dict[str, str]):
  """Runs the notebook at `path`; returns it with its outputs.

  Fails the test if a cell fails, the kernel survives, a TFF worker it
  started (found by the marker variable in `env`) outlives it, or no cell
  drew a PNG.
  """
  name = os.path.basename(path)
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  code_cells = [c for c in notebook.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None
             for c in code_cells), f'{name} is stored with outputs'
  marker = env[MARKER_VARIABLE]
  kernel_manager = manager.KernelManager(
      kernel_name=kernel_name,
      kernel_spec_manager=kernelspec.KernelSpecManager(
          kernel_dirs=kernel_dirs))
  client = nbclient.NotebookClient(
      notebook, km=kernel_manager, timeout=CELL_TIMEOUT_SECONDS,
      resources={'metadata': {'path': NOTEBOOK_DIR}})
  try:
    # cleanup_kc: shut the kernel down at the end although we made its
    # manager.
    client.execute(env=env, cleanup_kc=True)
  except nbclient_exceptions.CellExecutionError as e:
    pytest.fail(f'{name}: a cell failed:\n{e}', pytrace=False)
  finally:
    kernel_alive = kernel_manager.is_alive()
    if kernel_alive:
      kernel_manager.shutdown_kernel(now=True)
    leaked = _wait_for_no_workers(marker, timeout=15)
    for pid in leaked:  # Started by our kernel; do not leave them running.
      try:
        os.kill(pid, 9)
      except ProcessLookupError:
        pass
  assert not leaked, f'{name} left TFF workers running: {sorted(leaked)}'
  assert not kernel_alive, f'{name}: the kernel was not shut down'

  images = [output for cell in notebook.cells if cell.cell_type == 'code'
            for output in cell.outputs
            if 'image/png' in output.get('data', {})]
  assert images, f'{name} produced no image/png output'
  errors = [output for cell in notebook.cells if cell.cell_type == 'code'
            for output in cell.outputs if output.output_type == 'error']
  assert not errors
  return notebook


# The lessons notebook takes about twice the MNIST one; its lessons run in
# the default suite through lessons_test.py, the notebook in `make test-slow`.
@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.slow)
    if name == 'regression_lessons.ipynb' else name for name in NOTEBOOKS])
def test_notebook_runs_in_small_mode(name, kernel_dir, tmp_path):
  path = os.path.join(NOTEBOOK_DIR, name)
  first = nbformat.read(path, as_version=4).cells[0]
  assert first.cell_type == 'markdown'
  assert 'Colab' in first.source and '3.12' in first.source
  env = dict(os.environ, NOTEBOOK_SMALL='1',
             NOTEBOOK_OUTPUT_DIR=str(tmp_path / 'outputs'),
             TF_CPP_MIN_LOG_LEVEL='2',
             **{MARKER_VARIABLE: uuid.uuid4().hex})
  notebook = _execute(path, KERNEL_NAME, [kernel_dir], env)
  text = _output_text(notebook)
  assert 'Unable to register' not in text, 'TF\'s cuDNN/cuFFT/cuBLAS lines'


def _output_text(notebook) -> str:
  parts = []
  for cell in notebook.cells:
    for output in cell.get('outputs', []):
      parts.append(output.get('text', ''))
      parts.append(output.get('data', {}).get('text/plain', ''))
  return '\n'.join(parts)


# --- colab_quickstart.ipynb on Colab-like kernels ---------------------------

# What the kernel venvs get from PyPI (Colab's kernel has these and no TF).
KERNEL_PACKAGES = ['ipykernel==6.29.5', 'ipython==9.18.1',
                   'matplotlib==3.10.0', 'numpy==2.5.5']
# Colab's variables that break child interpreters and installs
# (googlecolab/colabtools #5237).
COLAB_VARIABLES = {
    'MPLBACKEND': 'module://matplotlib_inline.backend_inline',
    'UV_SYSTEM_PYTHON': 'true',
    'UV_PRERELEASE': 'if-necessary-or-explicit',
    'UV_CONSTRAINT': '/nonexistent/colab/uv_constraints.txt',
    'UV_BUILD_CONSTRAINT': '/nonexistent/colab/uv_build_constraints.txt',
    'PIP_CONSTRAINT': '/nonexistent/colab/pip_constraints.txt',
}


@pytest.fixture(scope='session')
def colab_kernels(tmp_path_factory):
  """Builds (once per session) a Colab-like kernel venv per Python version."""
  root = tmp_path_factory.mktemp('colab_kernels')
  made = {}

  def kernel(version: str) -> str:
    if version in made:
      return made[version]
    python = notebook_client_test.pyenv_python(version)
    venv = root / f'venv-{version}'
    subprocess.run([python, '-m', 'venv', str(venv)], check=True, timeout=300)
    done = subprocess.run(
        [str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet',
         '--disable-pip-version-check', *KERNEL_PACKAGES],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    name = f'colab-{version}'
    spec_dir = root / 'kernels' / name
    spec_dir.mkdir(parents=True)
    (spec_dir / 'kernel.json').write_text(json.dumps({
        'argv': [str(venv / 'bin' / 'python'), '-m', 'ipykernel_launcher',
                 '-f', '{connection_file}'],
        'display_name': f'Colab-like Python {version}', 'language': 'python',
    }))
    made[version] = name
    return name

  kernel.directory = str(root / 'kernels')
  return kernel


def _run_quickstart(version: str, colab_kernels, tmp_path):
  kernel_name = colab_kernels(version)
  path = os.path.join(NOTEBOOK_DIR, QUICKSTART)
  notebook = nbformat.read(path, as_version=4)
  assert notebook.metadata.kernelspec.name == 'python3'
  assert 'colab.research.google.com/assets/colab-badge.svg' in (
      notebook.cells[0].source)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('PYTHON', 'VIRTUAL_ENV'))}
  env.update(COLAB_VARIABLES, NOTEBOOK_SMALL='1',
             TFF_PIPELINE_VENV=notebook_client_test.VENV,
             TFF_PIPELINE_OUTPUT_DIR=str(tmp_path / 'runs'),
             **{MARKER_VARIABLE: uuid.uuid4().hex})
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # Colab does not set it.
  notebook = _execute(path, kernel_name, [colab_kernels.directory], env)
  text = _output_text(notebook)
  assert f'this kernel runs Python {version};' in text
  assert 'Unable to register' not in text, 'TF\'s cuDNN/cuFFT/cuBLAS lines'
  summaries = sorted(glob.glob(str(tmp_path / 'runs/results/*/summary.json')))
  assert [os.path.basename(os.path.dirname(p)) for p in summaries] == [
      'mnist_noniid_stragglers_compensated', 'mnist_noniid_stragglers_fedavg',
      'quickstart_fedavg']
  for summary_path in summaries:
    with open(summary_path) as f:
      summary = json.load(f)
    assert summary['status'] == 'completed', summary_path
    assert summary['python_version'].startswith('3.11.'), summary_path
    assert summary['tensorflow_federated_version'] == '0.87.0'


@pytest.mark.slow
def test_quickstart_on_a_python_313_kernel(colab_kernels, tmp_path):
  _run_quickstart('3.13.0', colab_kernels, tmp_path)


@pytest.mark.slow
def test_quickstart_on_a_python_312_kernel(colab_kernels, tmp_path):
  _run_quickstart('3.12.1', colab_kernels, tmp_path)


# --- make notebook: Colab's local runtime -----------------------------------

COLAB_ORIGIN = 'https://colab.research.google.com'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
  """Local addresses of sockets listening on `port` (from /proc/net)."""
  addresses = set()
  for table in ('/proc/net/tcp', '/proc/net/tcp6'):
    with open(table) as f:
      for line in f.readlines()[1:]:
        fields = line.split()
        address, port_hex = fields[1].split(':')
        if fields[3] == '0A' and int(port_hex, 16) == port:  # 0A: LISTEN.
          addresses.add(address)
  return addresses


def _get(url: str, headers: dict[str, str]):
  request = urllib.request.Request(url, headers=headers)
  try:
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.status, dict(response.headers), response.read()
  except urllib.error.HTTPError as e:
    return e.code, dict(e.headers), e.read()


def _execute_over_websocket(base: str, token: str, code: str) -> str:
  """Starts a python3 kernel over REST, runs `code`, returns its stdout."""
  import websocket  # pylint: disable=g-import-not-at-top
  auth = {'Authorization': f'token {token}'}
  request = urllib.request.Request(
      f'{base}/api/kernels', data=json.dumps({'name': 'python3'}).encode(),
      headers={**auth, 'Content-Type': 'application/json'}, method='POST')
  with urllib.request.urlopen(request, timeout=60) as response:
    kernel_id = json.load(response)['id']
  try:
    ws = websocket.create_connection(
        f'{base.replace("http", "ws", 1)}/api/kernels/{kernel_id}/channels',
        header=[f'Authorization: token {token}'], timeout=300)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        'header': {'msg_id': msg_id, 'username': 'test',
                   'session': uuid.uuid4().hex, 'msg_type': 'execute_request',
                   'version': '5.3',
                   'date': datetime.datetime.now(
                       datetime.timezone.utc).isoformat()},
        'parent_header': {}, 'metadata': {}, 'channel': 'shell',
        'content': {'code': code, 'silent': False, 'store_history': False,
                    'user_expressions': {}, 'allow_stdin': False},
    }))
    stdout, reply = [], None
    while reply is None:
      message = json.loads(ws.recv())
      if message.get('parent_header', {}).get('msg_id') != msg_id:
        continue
      kind = message['header']['msg_type']
      if kind == 'stream' and message['content']['name'] == 'stdout':
        stdout.append(message['content']['text'])
      elif kind == 'error':
        raise AssertionError('\n'.join(message['content']['traceback']))
      elif kind == 'execute_reply':
        reply = message['content']
    ws.close()
    assert reply['status'] == 'ok', reply
    return ''.join(stdout)
  finally:
    request = urllib.request.Request(f'{base}/api/kernels/{kernel_id}',
                                     headers=auth, method='DELETE')
    urllib.request.urlopen(request, timeout=60).close()


def test_make_notebook_serves_colabs_local_runtime():
  port = _free_port()
  # -o: use the existing .venv as it is (never reinstall it from a test).
  server = subprocess.Popen(
      ['make', '--no-print-directory', '-o', '.venv/.installed', 'notebook',
       f'PORT={port}'],
      cwd=helpers.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, start_new_session=True)
  try:
    url_pattern = re.compile(
        rf'^http://127\.0\.0\.1:{port}/\?token=([0-9a-f]{{32,}})$')
    token = None
    for line in server.stdout:
      match = url_pattern.match(line.rstrip('\n'))
      if match:
        token = match.group(1)
        break
    assert token, 'make notebook printed no http://127.0.0.1:PORT/?token=...'
    # Keep reading the server's log, so that a full pipe never blocks it.
    threading.Thread(target=server.stdout.read, daemon=True).start()
    base = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 120
    while True:
      try:
        status, _, _ = _get(f'{base}/api/status?token={token}', {})
        break
      except OSError:
        assert time.monotonic() < deadline, 'the server never answered'
        assert server.poll() is None, 'the server exited'
        time.sleep(0.5)
    assert status == 200

    status, headers, _ = _get(f'{base}/api/kernelspecs',
                              {'Origin': COLAB_ORIGIN,
                               'Authorization': f'token {token}'})
    assert status == 200
    assert headers['Access-Control-Allow-Origin'] == COLAB_ORIGIN
    assert headers['Access-Control-Allow-Credentials'] == 'true'
    status, _, _ = _get(f'{base}/api/kernelspecs', {'Origin': COLAB_ORIGIN})
    assert status == 403
    # 127.0.0.1 only, in /proc/net/tcp's little-endian hex.
    assert _listening_addresses(port) == {'0100007F'}

    stdout = _execute_over_websocket(
        base, token,
        'import sys, tensorflow_federated as tff\n'
        'print(sys.version_info[:2], tff.__version__)')
    assert stdout.strip().splitlines()[-1] == '(3, 11) 0.87.0'
  finally:
    os.killpg(server.pid, signal.SIGTERM)  # Its own session: make + server.
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      os.killpg(server.pid, signal.SIGKILL)
      server.wait()
  assert _listening_addresses(port) == set()
