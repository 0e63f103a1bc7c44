"""Model builders: the paper's architectures and seeded initialisation."""

import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline import models


@pytest.mark.parametrize('name, params', [('cnn', 1_663_370),
                                          ('2nn', 199_210)])
def test_paper_models_have_the_paper_parameter_counts(name, params):
  model = models.MODELS.get(name)(0, 784)
  assert models.count_parameters(model) == params
  assert model.output_shape == (None, 10)


def test_same_seed_same_initial_weights():
  a = models.build_2nn(5).get_weights()
  b = models.build_2nn(5).get_weights()
  c = models.build_2nn(6).get_weights()
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[0], c[0])
  # Same-shaped layers must not start equal.
  assert not np.array_equal(a[2][:200], a[0][:200])


def test_linear_model_starts_at_zero():
  weights = models.build_linear(0, 3).get_weights()
  assert [w.shape for w in weights] == [(3, 1), (1,)]
  assert all(not w.any() for w in weights)


def test_unknown_model_lists_valid_names():
  with pytest.raises(errors.UsageError, match="--model='vgg'.*2nn, cnn, linear"):
    models.MODELS.get('vgg')
