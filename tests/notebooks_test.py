"""The notebooks run top to bottom, in small mode, in this environment.

Each notebook is executed with `nbclient` on a kernel of the interpreter
running the tests (a kernel spec written to a temporary directory, so a fresh
clone needs no `ipykernel install`), with `NOTEBOOK_SMALL=1`. A failing cell
fails the test; the executed notebook must contain at least one PNG, and no
TFF worker started by the kernel may outlive it.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import nbclient
from nbclient import exceptions as nbclient_exceptions
import nbformat
from jupyter_client import kernelspec
from jupyter_client import manager
import pytest

from tests import helpers

NOTEBOOK_DIR = os.path.join(helpers.REPO_ROOT, 'notebooks')
NOTEBOOKS = ['federated_mnist.ipynb', 'regression_lessons.ipynb']
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


# The lessons notebook takes about twice the MNIST one; its lessons run in
# the default suite through lessons_test.py, the notebook in `make test-slow`.
@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.slow)
    if name == 'regression_lessons.ipynb' else name for name in NOTEBOOKS])
def test_notebook_runs_in_small_mode(name, kernel_dir, tmp_path):
  path = os.path.join(NOTEBOOK_DIR, name)
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  code_cells = [c for c in notebook.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None
             for c in code_cells), f'{name} is stored with outputs'
  first = notebook.cells[0]
  assert first.cell_type == 'markdown'
  assert 'Colab' in first.source and '3.12' in first.source

  marker = uuid.uuid4().hex
  env = dict(os.environ, NOTEBOOK_SMALL='1',
             NOTEBOOK_OUTPUT_DIR=str(tmp_path / 'outputs'),
             TF_CPP_MIN_LOG_LEVEL='2', **{MARKER_VARIABLE: marker})
  kernel_manager = manager.KernelManager(
      kernel_name=KERNEL_NAME,
      kernel_spec_manager=kernelspec.KernelSpecManager(
          kernel_dirs=[kernel_dir]))
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
