"""Runs `experiments.train_mnist.main` for several flag sets in one process.

Used by train_mnist_combinations_test.py: one Python process (one TensorFlow
import, one MNIST load) parses each flag set as the binary's command line
would and runs it, printing one JSON line per flag set with the outcome.
"""

import json
import sys
import traceback

from absl import flags
from absl.testing import flagsaver

from experiments import train_mnist
from tff_pipeline import errors


def main() -> None:
  combinations = json.loads(sys.stdin.read())
  for argv in combinations:
    outcome = {'argv': argv}
    try:
      with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        remaining = flags.FLAGS(['train_mnist', *argv])
        train_mnist.main(remaining)
      outcome['ok'] = True
    except errors.PipelineError as e:
      outcome.update(ok=False, error=f'{type(e).__name__}: {e}')
    except Exception:  # pylint: disable=broad-except
      outcome.update(ok=False, error=traceback.format_exc(limit=3))
    print(json.dumps(outcome), flush=True)


if __name__ == '__main__':
  main()
