"""Hostile input for the typed configs: valid (and then every documented
guarantee holds) or a UsageError naming a flag. See tests/fuzzing.py.
"""

from __future__ import annotations

import dataclasses
import math
import re

from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import faults as faults_lib
from tff_pipeline import heterogeneity as heterogeneity_lib


_NAMES = st.one_of(
    st.sampled_from(['run', 'a.b-c_d', '.', '..', '...', '', 'a/b', '../x',
                     '-', 'ünï', 'a b', 'x' * 300]),
    st.text(max_size=12),
)


@dataclasses.dataclass(frozen=True)
class _Build:
  """A config to construct inside the test: construction validates it."""

  cls: type
  kwargs: dict

  def __call__(self):
    return self.cls(**{k: v() if isinstance(v, _Build) else v
                       for k, v in self.kwargs.items()})


def _aggregation_configs():
  """AggregationConfigs with random values in every field, by type."""
  by_type = {'bool': st.booleans(), 'float': fuzzing.ANY_FLOAT,
             'int': fuzzing.ANY_INT}
  return st.fixed_dictionaries({
      f.name: by_type[f.type]
      for f in dataclasses.fields(config_lib.AggregationConfig)
      if f.type in by_type}).map(
          lambda kwargs: _Build(config_lib.AggregationConfig, kwargs))


@st.composite
def _training_configs(draw):
  def optimizer(role):
    return _Build(config_lib.OptimizerConfig, dict(
        name=draw(st.sampled_from(['sgd', 'adam', 'nope'])),
        learning_rate=draw(fuzzing.ANY_FLOAT),
        momentum=draw(fuzzing.ANY_FLOAT),
        epsilon=draw(fuzzing.ANY_FLOAT), role=role))

  aggregation = draw(_aggregation_configs())
  heterogeneity = _Build(heterogeneity_lib.ComputeHeterogeneity, dict(
      straggler_fraction=draw(fuzzing.ANY_FLOAT),
      straggler_budget=draw(st.sampled_from(
          list(heterogeneity_lib.STRAGGLER_BUDGETS) + ['never', ''])),
      straggler_min_steps=draw(fuzzing.ANY_INT),
      straggler_max_steps=draw(fuzzing.ANY_INT),
      capacity_profile=draw(st.sampled_from(
          heterogeneity_lib.CAPACITY_PROFILES.names() + ['gaussian', ''])),
      min_capacity=draw(fuzzing.ANY_FLOAT)))
  faults = _Build(faults_lib.FaultInjection, dict(
      fraction=draw(fuzzing.ANY_FLOAT),
      mode=draw(st.sampled_from(faults_lib.FAULT_MODES.names() + ['evil']))))
  return _Build(config_lib.TrainingConfig, dict(
      experiment_name=draw(_NAMES),
      root_output_dir=draw(st.sampled_from(['/tmp/x', '', 'relative/dir'])),
      total_rounds=draw(fuzzing.ANY_INT),
      clients_per_round=draw(fuzzing.ANY_INT),
      client_epochs_per_round=draw(fuzzing.ANY_INT),
      client_batch_size=draw(fuzzing.ANY_INT),
      client_optimizer=optimizer('client'),
      server_optimizer=optimizer('server'),
      rounds_per_eval=draw(fuzzing.ANY_INT),
      rounds_per_checkpoint=draw(fuzzing.ANY_INT),
      seed=draw(fuzzing.ANY_INT), heterogeneity=heterogeneity,
      aggregation=aggregation, proximal_strength=draw(fuzzing.ANY_FLOAT),
      faults=faults,
  ))


_GOOD_CONFIG = config_lib.TrainingConfig(experiment_name='x',
                                         root_output_dir='/tmp/x')


def _replaced(default, **changes) -> _Build:
  """`default`'s fields, some replaced, built when the test calls it."""
  return _Build(type(default), {
      **{f.name: getattr(default, f.name)
         for f in dataclasses.fields(default)},
      **changes})


def _nearly(draw, default, random_configs, max_changed: int):
  """`default` with 1..max_changed fields taken from a random config."""
  full = draw(random_configs)
  names = draw(st.lists(st.sampled_from(
      [f.name for f in dataclasses.fields(default)]),
      min_size=1, max_size=max_changed, unique=True))
  return _replaced(default, **{n: full.kwargs.get(n, getattr(default, n))
                               for n in names})


@st.composite
def _nearly_valid_configs(draw):
  """The defaults with one to three fields replaced by random values."""
  return _nearly(draw, _GOOD_CONFIG, _training_configs(), 3)


def _assert_config_facts(c: config_lib.TrainingConfig, num_clients) -> None:
  """What a config that passed `validate` guarantees."""
  assert re.fullmatch(r'[A-Za-z0-9._-]+', c.experiment_name)
  assert c.experiment_name not in ('.', '..')
  assert c.root_output_dir
  for value in (c.total_rounds, c.clients_per_round,
                c.client_epochs_per_round, c.rounds_per_eval,
                c.rounds_per_checkpoint):
    assert value >= 1
  if num_clients is not None:
    assert 1 <= c.clients_per_round <= num_clients
  assert c.client_batch_size >= 1 or c.client_batch_size == -1
  assert 0 <= c.seed < 2**31
  for optimizer in (c.client_optimizer, c.server_optimizer):
    assert math.isfinite(optimizer.learning_rate)
    assert optimizer.learning_rate > 0
    assert 0 <= optimizer.momentum < 1
    assert math.isfinite(optimizer.epsilon) and optimizer.epsilon > 0
  a = c.aggregation
  assert 0 <= a.trim_fraction < 0.5 and 0 <= a.dp_delta < 1
  assert math.isfinite(a.dp_clip_norm) and a.dp_clip_norm > 0
  assert math.isfinite(a.dp_noise_multiplier) and a.dp_noise_multiplier >= 0
  assert math.isfinite(a.clip_norm) and a.clip_norm >= 0
  assert 1 <= a.compression_bits <= 16
  assert sum([a.dp, a.secure_aggregation, a.compression]) <= 1
  assert 0 <= c.faults.fraction <= 1
  assert 0 <= c.heterogeneity.straggler_fraction <= 1
  assert 0 < c.heterogeneity.min_capacity <= 1
  assert math.isfinite(c.proximal_strength) and c.proximal_strength >= 0


@fuzzing.deterministic(300)
@given(c=st.one_of(_training_configs(), _nearly_valid_configs()),
       num_clients=st.one_of(st.none(), fuzzing.ANY_INT))
@example(c=_replaced(_GOOD_CONFIG, experiment_name='..'), num_clients=10)
@example(c=_replaced(
    _GOOD_CONFIG,
    client_optimizer=_Build(config_lib.OptimizerConfig,
                            {'learning_rate': 10**400})),
         num_clients=10)
def test_training_config_is_valid_or_a_usage_error_naming_a_flag(
    c, num_clients):
  # Configs are validated at construction: the strategies give `_Build`s,
  # which the test constructs (and validates against `num_clients`).
  try:
    config = c()
    config.validate(num_clients=num_clients)
  except errors.UsageError as e:
    event('usage error')
    assert re.search(r'--[a-z_]+', str(e)), str(e)
  else:
    event('valid')
    _assert_config_facts(config, num_clients)


@st.composite
def _nearly_default_aggregation_configs(draw):
  """The defaults with one or two fields replaced by random values."""
  return _nearly(draw, config_lib.AggregationConfig(), _aggregation_configs(),
                 2)


@fuzzing.deterministic(200)
@given(c=st.one_of(_aggregation_configs(),
                   _nearly_default_aggregation_configs()))
@example(c=_Build(config_lib.AggregationConfig, {'compensation_q': 10**400}))
def test_aggregation_config_is_valid_or_a_usage_error_naming_a_flag(c):
  try:
    config = c()
  except errors.UsageError as e:
    event('usage error')
    assert re.search(r'--[a-z_]+', str(e)), str(e)
  else:
    event('valid')
    _assert_config_facts(dataclasses.replace(_GOOD_CONFIG, aggregation=config),
                         None)
