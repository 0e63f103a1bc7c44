"""The README's examples run as written.

The Python blocks of README.md are executed: the library example in this
process (with its output directory moved to a temp dir), and the regression
check after running the README's `train_regression` command in a temp
working directory, where its printed solution must equal the run's
`optimum_weights`.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def _blocks(language: str) -> list[str]:
  return re.findall(rf'^```{language}\n(.*?)^```', README, re.M | re.S)


def _block_containing(language: str, text: str) -> str:
  found = [b for b in _blocks(language) if text in b]
  assert len(found) == 1, f'expected one ```{language} block with {text!r}'
  return found[0]


# The printed solution depends on the data alone, not on the rounds: by
# default the README's command runs with 2 rounds (and an absolute output
# directory) in the binary's long-lived test process; `make test-slow` runs
# it exactly as written (100 rounds) in a fresh interpreter.
@pytest.mark.parametrize('as_written', [
    pytest.param(True, marks=pytest.mark.slow, id='as_written'),
    pytest.param(False, id='two_rounds')])
def test_regression_example_recomputes_the_optimum(tmp_path, as_written):
  command = _block_containing('', 'experiments.train_regression')
  argv = shlex.split(command.replace('\\\n', ' '))
  assert argv[0] == '.venv/bin/python'
  assert argv[1:3] == ['-m', 'experiments.train_regression']
  if as_written:
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'TF_CPP_MIN_LOG_LEVEL': '2'}
    subprocess.run([sys.executable, *argv[1:], '--progress=false'],
                   cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=600)
  else:
    assert '--root_output_dir=runs' in argv
    done = helpers.run_binary_in_process(
        'experiments.train_regression', *argv[3:], '--progress=false',
        '--total_rounds=2', f'--root_output_dir={tmp_path / "runs"}')
    assert done.returncode == 0, done.stderr
  snippet = _block_containing('python', 'lstsq')
  out = io.StringIO()
  cwd = os.getcwd()
  try:
    os.chdir(tmp_path)
    with contextlib.redirect_stdout(out):
      exec(snippet, {})  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  printed = np.array(out.getvalue().strip().strip('[]').split(), dtype=float)
  summary = json.loads(
      (tmp_path / 'runs/results/teach/summary.json').read_text())
  np.testing.assert_allclose(printed, np.ravel(summary['optimum_weights']),
                             rtol=1e-6, atol=1e-8)


def test_library_example_trains(tmp_path, tff_runtime):
  del tff_runtime
  snippet = _block_containing('python', 'run_federated')
  assert "'/tmp/nb'" in snippet
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(snippet.replace("'/tmp/nb'", repr(str(tmp_path))), {})  # pylint: disable=exec-used
  accuracy = float(out.getvalue().strip().splitlines()[-1])
  summary = json.loads(
      (tmp_path / 'results/nb/summary.json').read_text())
  assert accuracy == pytest.approx(summary['final_eval_accuracy'])
  assert summary['rounds_completed'] == 5
  # Five rounds of the 2NN on non-IID clients: well above chance (0.1).
  assert accuracy > 0.5


def test_relative_links_of_the_docs_resolve():
  pages = [ROOT / 'README.md', ROOT / 'BUILD.md',
           ROOT / 'benchmarks' / 'README.md', *sorted(ROOT.glob('docs/*.md'))]
  broken = []
  for page in pages:
    for link in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', page.read_text()):
      if not re.match(r'[a-z]+:', link) and not (page.parent / link).exists():
        broken.append(f'{page.relative_to(ROOT)}: {link}')
  assert not broken
