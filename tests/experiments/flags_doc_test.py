"""The binaries' flags come from the declarations, and docs/flags.md lists
them (`python -m experiments.flags_doc` rewrites it)."""

import pytest

from experiments import common_flags
from experiments import flags_doc
from tff_pipeline import settings
from tff_pipeline import tasks
from tff_pipeline.data import regression

# The hparams.csv columns of train_mnist, in order, as the first releases
# wrote them.
MNIST_HPARAMS = [
    'experiment_name', 'root_output_dir', 'seed', 'allow_flag_changes',
    'progress', 'workers', 'worker_connect_timeout', 'worker_tls_ca',
    'worker_tls_cert', 'worker_tls_key', 'total_rounds',
    'num_clients', 'clients_per_round', 'client_epochs_per_round',
    'client_batch_size', 'algorithm', 'aggregator', 'rounds_per_eval',
    'rounds_per_checkpoint', 'client_optimizer', 'client_learning_rate',
    'client_momentum', 'client_epsilon', 'server_optimizer',
    'server_learning_rate', 'server_momentum', 'server_epsilon',
    'straggler_fraction', 'straggler_budget', 'straggler_min_steps',
    'straggler_max_steps', 'capacity_profile', 'min_capacity',
    'slow_client_fraction', 'compensation_normalize', 'compensation_q',
    'compensation_max_factor', 'proximal_strength', 'trim_fraction',
    'clip_norm', 'zeroing', 'dp_noise_multiplier', 'dp_clip_norm',
    'dp_adaptive_clipping', 'dp_delta', 'secure_aggregation', 'compression',
    'compression_bits', 'faulty_client_fraction', 'faulty_mode', 'model',
    'partition', 'shards_per_client', 'dirichlet_alpha',
    'quantity_skew_exponent', 'client_holdout_fraction', 'feature_skew',
    'feature_skew_fraction', 'mnist_path']


@pytest.fixture(scope='module')
def collected():
  return {binary: flags_doc.collect(binary) for binary in flags_doc.BINARIES}


def _names(blocks):
  return [name for _, names in blocks for name in names]


def test_docs_flags_md_is_up_to_date():
  with open(flags_doc.PATH, encoding='utf-8') as f:
    assert f.read() == flags_doc.render(), (
        'docs/flags.md is out of date: run python -m experiments.flags_doc')


def test_blocks_hold_every_shared_setting_once():
  laid_out = [n for _, names in common_flags.training_blocks() for n in names]
  assert len(laid_out) == len(set(laid_out))
  assert set(laid_out) == set(common_flags.training_settings())


@pytest.mark.parametrize('binary, spec_type', [
    ('train_mnist', tasks.MnistTaskSpec),
    ('train_regression', regression.RegressionSpec)])
def test_each_binary_defines_a_flag_per_declared_setting(
    collected, binary, spec_type):
  blocks, _ = collected[binary]
  expected = [*common_flags.training_settings(),
              *(d.flag for d in settings.walk(spec_type))]
  assert sorted(_names(blocks)) == sorted(expected)


def test_mnist_flags_keep_their_order_defaults_and_choices(collected):
  blocks, values = collected['train_mnist']
  # The columns of earlier runs keep their order; settings added since (the
  # rest of a config dataclass, see common_flags.TRAINING_BLOCKS) follow
  # within their block.
  names = _names(blocks)
  assert [n for n in names if n in MNIST_HPARAMS] == MNIST_HPARAMS
  assert values['model'].parser.enum_values == ['cnn', '2nn']
  assert values['total_rounds'].default == 20
  assert values['rounds_per_checkpoint'].default == 5
  assert values['num_clients'].default == 100
  assert values['feature_skew_fraction'].default == 0.2
  assert values['experiment_name'].default is None
  assert values['workers'].default == []


def test_regression_flags_keep_their_defaults(collected):
  _, values = collected['train_regression']
  assert values['total_rounds'].default == 100
  assert values['num_clients'].default == 10
  assert values['client_batch_size'].default == -1
  assert values['rounds_per_checkpoint'].default == 25
  assert values['true_weights'].default == []
