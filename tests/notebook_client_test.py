"""tff_pipeline.notebook_client and tff_pipeline.tf_noise.

Fast tests need no TensorFlow: the client's pieces (clean child environment,
output splitting, history parsing, environment checks, the atomic build),
the standard-library-only import on Python 3.9-3.13 from an installed copy,
and `pip install --no-deps --target`. Slow: the interrupted install and the
run-and-interrupt test, which trains in the pinned `.venv`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests import helpers
from tff_pipeline import notebook_client as nc
from tff_pipeline import notebook_environment
from tff_pipeline import tf_noise

# TF 2.14.1's three lines, verbatim from `python -c 'import tensorflow'`.
NOISE = [
    '2026-12-02 16:29:45.919661: E tensorflow/compiler/xla/stream_executor/'
    'cuda/cuda_dnn.cc:9342] Unable to register cuDNN factory: Attempting to '
    'register factory for plugin cuDNN when one has already been registered',
    '2026-12-02 16:29:45.919743: E tensorflow/compiler/xla/stream_executor/'
    'cuda/cuda_fft.cc:609] Unable to register cuFFT factory: Attempting to '
    'register factory for plugin cuFFT when one has already been registered',
    '2026-12-02 16:29:45.919834: E tensorflow/compiler/xla/stream_executor/'
    'cuda/cuda_blas.cc:1518] Unable to register cuBLAS factory: Attempting to '
    'register factory for plugin cuBLAS when one has already been registered',
]
VENV = os.path.join(helpers.REPO_ROOT, '.venv')
PYENV_ROOT = os.environ.get('PYENV_ROOT', os.path.expanduser('~/.pyenv'))


def pyenv_python(version: str) -> str:
  """The pyenv interpreter `version`; skips (fails under CI=true) if absent."""
  path = os.path.join(PYENV_ROOT, 'versions', version, 'bin', 'python')
  if not os.path.isfile(path):
    message = f'no Python {version} interpreter at {path} (pyenv)'
    if os.environ.get('CI') == 'true':
      pytest.fail(message, pytrace=False)
    pytest.skip(message)
  return path


def python311() -> str:
  found = shutil.which('python3.11')
  if found is None:
    pytest.skip('no python3.11 on PATH')
  return found


# --- tf_noise ---------------------------------------------------------------


def test_noise_matches_exactly_the_three_lines():
  assert all(tf_noise.is_noise(line) for line in NOISE)
  assert tf_noise.is_noise('E ' + NOISE[0].split(': E ', 1)[1])  # No time.
  kept = [
      NOISE[0].replace('cuDNN when', 'cuFFT when'),  # Plugins do not match.
      NOISE[1].replace(': E ', ': W '),
      NOISE[2] + ' and something else',
      '2026-12-02 16:29:45.9: E tensorflow/core/x.cc:1] Out of memory',
      'Unable to register cuDNN factory',
  ]
  assert not any(tf_noise.is_noise(line) for line in kept)
  data = '\n'.join(['before', *NOISE, 'after', '']).encode()
  assert tf_noise.filter_text(data) == b'before\nafter\n'


def test_install_filters_the_first_tensorflow_import(tmp_path):
  """A stand-in `tensorflow` package prints the noise and a real error."""
  package = tmp_path / 'tensorflow'
  package.mkdir()
  (package / '__init__.py').write_text(
      'import os, sys\n'
      f'os.write(2, {json.dumps(chr(10).join(NOISE) + chr(10))}.encode())\n'
      'os.write(2, b"E real.cc:1] a real error\\n")\n'
      'print("python-level warning", file=sys.stderr)\n')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path), helpers.REPO_ROOT]))
  done = subprocess.run(
      [sys.executable, '-c',
       'import experiments, sys\n'
       'print("before", file=sys.stderr, flush=True)\n'
       'import tensorflow\n'
       'print("after", file=sys.stderr)'],
      env=env, capture_output=True, text=True, timeout=60, check=True)
  assert done.stderr.splitlines() == [
      'before', 'E real.cc:1] a real error', 'python-level warning', 'after']


# --- the client's pieces, no TensorFlow -------------------------------------


def test_child_environment_drops_colab_variables():
  base = {'UV_CONSTRAINT': '/missing', 'UV_SYSTEM_PYTHON': 'true',
          'PIP_CONSTRAINT': '/missing', 'PYTHONPATH': '/x', 'HOME': '/root',
          'MPLBACKEND': 'module://matplotlib_inline.backend_inline',
          'TF_CPP_MIN_LOG_LEVEL': '0'}
  env = nc.child_environment(base, extra={'PYTHONPATH': '/src'})
  assert env == {'HOME': '/root', 'MPLBACKEND': 'Agg', 'PYTHONPATH': '/src',
                 'PYTHONUNBUFFERED': '1', 'TF_CPP_MIN_LOG_LEVEL': '0'}


def test_output_filter_splits_progress_from_lines():
  progress, lines = [], []
  output = nc._OutputFilter(progress.append, lines.append)
  output.feed('start\n' + NOISE[0] + '\n\rrun:  10%|#')
  output.feed('|  1/10\rrun:  20%|##|  2/10\n')
  output.feed('error: bad flag\npartial')
  output.close()
  assert lines == ['start', 'error: bad flag', 'partial']
  assert progress == ['run:  10%|#', 'run:  10%|#|  1/10', 'run:  20%|##|  2/10']


def test_read_history_and_summary_table(tmp_path):
  path = tmp_path / 'experiment.metrics.csv'
  path.write_text('round_num,train/loss,eval/accuracy,name\n'
                  '1,0.5,,x\n2,0.25,0.875,y\n')
  history = nc.read_history(str(path))
  assert history == [
      {'round_num': 1, 'train/loss': 0.5, 'eval/accuracy': None, 'name': 'x'},
      {'round_num': 2, 'train/loss': 0.25, 'eval/accuracy': 0.875,
       'name': 'y'}]
  result = nc.RunResult(name='r', history=history,
                        summary={'final_eval_accuracy': 0.875},
                        paths=nc.RunPaths.of(str(tmp_path), 'r'), command=[],
                        seconds=0.0)
  assert result.series('eval/accuracy') == ([2], [0.875])
  with pytest.raises(nc.NotebookError, match="'eval/loss' has no values"):
    result.series('eval/loss')
  table = nc.summary_table([result], ['final_eval_accuracy', 'missing'])
  assert str(table).splitlines() == [
      'run  final_eval_accuracy  missing', 'r    0.8750']
  assert '<td>0.8750</td>' in table._repr_html_()


def test_flag_arguments():
  assert nc._flag_arguments({'total_rounds': 4, 'progress': False,
                             'model_widths': (1, 0.5), 'aggregator': 'mean'}
                            ) == ['--total_rounds=4', '--noprogress',
                                  '--model_widths=1,0.5', '--aggregator=mean']


def test_unknown_binary_and_flagfile_are_one_sentence():
  with pytest.raises(nc.NotebookError, match=r"^unknown binary 'train'"):
    nc.run('train')
  env = nc.Environment(python=sys.executable, prefix=sys.prefix,
                       python_version='3.11.0', tff_version='0.87.0')
  with pytest.raises(nc.NotebookError, match=r'^flagfile nope.flags not found'):
    nc.run('train_mnist', 'nope.flags', environment=env)


# --- environments -----------------------------------------------------------


def test_uses_the_checkouts_venv(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(nc.VENV_VARIABLE, os.path.relpath(VENV, tmp_path))
  env = nc.ensure_environment(cache_dir=str(tmp_path / 'cache'))
  assert env.python_version.startswith('3.11.')
  assert env.tff_version == '0.87.0'
  assert env.prefix == os.path.realpath(VENV)  # .venv may be a symlink.
  assert os.path.isfile(env.python)
  assert not (tmp_path / 'cache').exists()  # Nothing built.


def _one_sentence(error: Exception) -> str:
  message = str(error)
  assert '\n' not in message and 'Traceback' not in message
  return message


def test_missing_environment(monkeypatch, tmp_path):
  missing = str(tmp_path / 'nowhere')
  monkeypatch.setenv(nc.VENV_VARIABLE, missing)
  with pytest.raises(nc.EnvironmentSetupError) as raised:
    nc.ensure_environment()
  assert _one_sentence(raised.value).startswith(
      f'TFF_PIPELINE_VENV={missing} does not exist: point it at')


def test_environment_of_another_python(monkeypatch, tmp_path):
  python = pyenv_python('3.13.0')
  subprocess.run([python, '-m', 'venv', '--without-pip', str(tmp_path / 'v')],
                 check=True, timeout=120)
  monkeypatch.setenv(nc.VENV_VARIABLE, str(tmp_path / 'v'))
  with pytest.raises(nc.EnvironmentSetupError) as raised:
    nc.ensure_environment()
  assert _one_sentence(raised.value).startswith(
      f'TFF_PIPELINE_VENV={tmp_path / "v"} runs Python 3.13.0, but TFF 0.87.0 '
      'needs Python 3.11')


def test_environment_without_tff(monkeypatch, tmp_path):
  subprocess.run([python311(), '-m', 'venv', '--without-pip',
                  str(tmp_path / 'v')], check=True, timeout=120)
  monkeypatch.setenv(nc.VENV_VARIABLE, str(tmp_path / 'v'))
  with pytest.raises(nc.EnvironmentSetupError) as raised:
    nc.ensure_environment()
  assert _one_sentence(raised.value).startswith(
      f'TFF_PIPELINE_VENV={tmp_path / "v"} has no tensorflow-federated 0.87.0 '
      '(found: none)')


def _project_with(tmp_path, requirements: str) -> str:
  project = tmp_path / 'project'
  project.mkdir()
  (project / 'requirements.txt').write_text(requirements)
  (project / 'constraints.txt').write_text('')
  (project / 'requirements-nodeps.txt').write_text('')
  return str(project)


def test_failed_install_leaves_nothing_trusted(tmp_path):
  cache = tmp_path / 'cache'
  cache.mkdir()
  stale = cache / '.build-999999999-abc'  # A dead builder's leftovers.
  stale.mkdir()
  project = _project_with(tmp_path, f'{tmp_path}/no-such-package-dir\n')
  with pytest.raises(nc.EnvironmentSetupError) as raised:
    nc.build_environment(python311(), project, str(cache), say=lambda _: None)
  assert _one_sentence(raised.value).startswith(
      'installing requirements.txt failed ("')
  assert f'see {cache / "install.log"}' in str(raised.value)
  assert sorted(os.listdir(cache)) == ['install.log']


@pytest.mark.slow  # ~20 s: a venv with pip, like the failed install above.
def test_interrupted_install_leaves_nothing_trusted(tmp_path):
  cache = tmp_path / 'cache'
  cache.mkdir()
  project = _project_with(tmp_path, '')

  def interrupt(message):
    if message.startswith('Installing'):
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    nc.build_environment(python311(), project, str(cache), say=interrupt)
  assert sorted(os.listdir(cache)) == ['install.log']
  # A directory at the final name without the ready mark is never used.
  final, digest = notebook_environment._built_location(str(cache), project)
  os.makedirs(os.path.join(final, 'bin'))
  assert not notebook_environment._is_ready(final, digest)


# --- installed copies -------------------------------------------------------


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """`pip install --no-deps --target DIR` of a copy of the checkout."""
  base = tmp_path_factory.mktemp('install')
  source = base / 'source'
  shutil.copytree(helpers.REPO_ROOT, source, ignore=shutil.ignore_patterns(
      '.venv', '.git', 'runs', 'build', '*.egg-info', '__pycache__'))
  target = base / 'target'
  # --no-build-isolation: build with .venv's setuptools, no download.
  done = subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
       '--no-build-isolation', '--disable-pip-version-check', '--target',
       str(target), str(source)],
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  return target


@pytest.mark.parametrize('version', ['3.9.18', '3.12.1', '3.13.0'])
def test_client_imports_with_the_standard_library_alone(installed, version):
  python = pyenv_python(version)
  done = subprocess.run(
      [python, '-I', '-c',
       f'import sys; sys.path.insert(0, {str(installed)!r})\n'
       'import tff_pipeline.notebook_client as nc\n'
       'third = sorted(m for m in sys.modules if m.split(".")[0] in '
       '("tensorflow", "numpy", "matplotlib", "absl", "IPython"))\n'
       'print(nc.__file__, third)'],
      capture_output=True, text=True, timeout=60, cwd=installed.parent)
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == [
      str(installed / 'tff_pipeline' / 'notebook_client.py'), '[]']


def test_installed_packages_import_from_another_directory(installed, tmp_path):
  done = subprocess.run(
      [sys.executable, '-c',
       'import experiments.train_mnist, tff_pipeline.training.loop as loop\n'
       'print(loop.__file__)\n'
       'print(experiments.train_mnist.__file__)'],
      cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(installed)),
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == [
      str(installed / 'tff_pipeline' / 'training' / 'loop.py'),
      str(installed / 'experiments' / 'train_mnist.py')]
  for data in ('experiments/flags/mnist_noniid_stragglers_compensated.flags',
               'tff_pipeline/runtime/bind_shim.c'):
    assert (installed / data).is_file()


# --- a real run, interrupted ------------------------------------------------


@pytest.mark.slow
def test_interrupt_stops_the_run_and_its_worker(tmp_path):
  """SIGINT to a 3.13 `nc.run` caller: child and TFF worker both stop."""
  python = pyenv_python('3.13.0')
  script = (
      f'import sys; sys.path.insert(0, {helpers.REPO_ROOT!r})\n'
      'from tff_pipeline import notebook_client as nc\n'
      'try:\n'
      "  nc.run('train_mnist', model='2nn', total_rounds=500,\n"
      "         experiment_name='interrupted', progress=False)\n"
      'except KeyboardInterrupt:\n'
      "  print('interrupted', flush=True)\n")
  env = dict(os.environ, TFF_PIPELINE_VENV=VENV,
             TFF_PIPELINE_OUTPUT_DIR=str(tmp_path))
  caller = subprocess.Popen([python, '-c', script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
  try:
    deadline = time.monotonic() + 300
    workers = set()
    while not workers and time.monotonic() < deadline:
      time.sleep(0.5)
      workers = helpers.worker_binary_pids() & nc._descendants(caller.pid)
      csv = tmp_path / 'results' / 'interrupted' / 'experiment.metrics.csv'
      workers = workers if csv.exists() else set()
    assert workers, 'the run never started its worker'
    child = {p for p in nc._descendants(caller.pid) if p not in workers}
    caller.send_signal(signal.SIGINT)
    output, _ = caller.communicate(timeout=120)
  finally:
    if caller.poll() is None:
      caller.kill()
  assert output.splitlines()[-1] == 'interrupted', output
  assert not nc._alive(workers | child)


def test_binaries_print_no_cudnn_lines():
  """A binary that imports TF and fails on a flag prints its error only."""
  done = helpers.run_binary('experiments.train_mnist', '--total_rounds=0',
                            '--experiment_name=x', timeout=300)
  assert done.returncode == 2
  assert len(done.stderr.splitlines()) == 1, done.stderr
  assert done.stderr.startswith('error: ') and 'total_rounds' in done.stderr
