"""Finite guards: non-finite updates never pass clipping, zeroing or DP.

Execution tests check each guarded process against NumPy (the guard's
reference, then clipping/zeroing/the mean written out here); computation
tests check the type signatures. Processes are built once per module.
"""

import math

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline.aggregators import finite_guard

VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, [2, 2]),
                                tff.TensorType(np.float32, [3])])
WEIGHT_TYPE = tff.TensorType(np.float32)
CLIP = 1.0
CLIENTS_PER_ROUND = 4
# TFF's zeroing settings (aggregators/__init__.py): threshold 2 C + 1.
ZEROING = dict(initial_estimate=10.0, target_quantile=0.98,
               learning_rate=math.log(10.0), multiplier=2.0, increment=1.0)
# DP's adaptive clip (TFF's defaults for gaussian_adaptive).
DP_QUANTILE, DP_LEARNING_RATE = 0.5, 0.2


def _update(kernel, bias):
  return [np.asarray(kernel, np.float32).reshape(2, 2),
          np.asarray(bias, np.float32)]


NAN, INF = np.nan, np.inf
# Mixed structures: one bad leaf is enough, the other leaf stays finite.
GOOD_SMALL = _update([0.1, -0.2, 0.05, 0.0], [0.1, 0.0, -0.1])
GOOD_LARGE = _update([3.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0])  # norm 5
NAN_KERNEL = _update([0.1, NAN, 0.0, 0.0], [0.1, 0.2, 0.3])
POS_INF_BIAS = _update([0.1, 0.1, 0.1, 0.1], [0.0, INF, 0.0])
NEG_INF_KERNEL = _update([-INF, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
ALL_NAN = _update([NAN] * 4, [NAN] * 3)

ROUND = [GOOD_SMALL, NAN_KERNEL, GOOD_LARGE, POS_INF_BIAS, NEG_INF_KERNEL,
         GOOD_SMALL, ALL_NAN, GOOD_LARGE]
WEIGHTS = [2.0, 1.0, 3.0, 1.0, 4.0,
           0.0,   # a zero-weight client with a finite update
           0.0,   # a zero-weight client with a NaN update: 0 * NaN is NaN
           NAN]   # a finite update with a NaN weight
NUM_BAD = 5  # NAN_KERNEL, POS_INF_BIAS, NEG_INF_KERNEL, ALL_NAN, NaN weight


def _norm(update):
  return math.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64)))
                       for t in update))


def _clip(update, clip):
  norm = _norm(update)
  scale = min(1.0, clip / norm) if norm > 0 else 1.0
  return [t * scale for t in update], norm > clip


def _zero(update, threshold):
  norm = _norm(update)
  return ([np.zeros_like(t) for t in update] if norm > threshold else update,
          norm > threshold)


def _weighted_mean(updates, weights):
  total = float(np.sum(weights))
  if total == 0:
    return [np.zeros_like(t) for t in updates[0]]
  return [sum(w * u[k].astype(np.float64) for u, w in zip(updates, weights))
          / total for k in range(len(updates[0]))]


def _allclose(actual, expected):
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


FACTORIES = {
    'clip': lambda: finite_guard.clipping_factory(
        CLIP, tff.aggregators.MeanFactory()),
    'zero': lambda: finite_guard.zeroing_factory(
        tff.aggregators.PrivateQuantileEstimationProcess.no_noise(**ZEROING),
        tff.aggregators.MeanFactory()),
    # TFF's own wrappers, unguarded, for comparison.
    'tff_clip': lambda: tff.aggregators.clipping_factory(
        CLIP, tff.aggregators.MeanFactory()),
    'tff_zero': lambda: tff.aggregators.zeroing_factory(
        tff.aggregators.PrivateQuantileEstimationProcess.no_noise(**ZEROING),
        tff.aggregators.MeanFactory()),
    'dp_fixed': lambda: finite_guard.dp_factory(
        tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            noise_multiplier=0.0, clients_per_round=CLIENTS_PER_ROUND,
            clip=CLIP)),
    'dp_adaptive': lambda: finite_guard.dp_factory(
        tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
            noise_multiplier=0.0, clients_per_round=CLIENTS_PER_ROUND,
            initial_l2_norm_clip=CLIP)),
}


@pytest.fixture(scope='module')
def processes(tff_runtime):
  del tff_runtime
  built = {}
  for name, make in FACTORIES.items():
    factory = make()
    if isinstance(factory, tff.aggregators.WeightedAggregationFactory):
      built[name] = factory.create(VALUE_TYPE, WEIGHT_TYPE)
    else:
      built[name] = factory.create(VALUE_TYPE)
  return built


def _run(process, updates, weights=None, state=None):
  state = process.initialize() if state is None else state
  if process.is_weighted:
    return process.next(state, updates,
                        [np.float32(w) for w in weights])
  return process.next(state, updates)


# ----------------------------------------------------------------------------
# The NumPy reference of the guard itself.
# ----------------------------------------------------------------------------


def test_guard_reference_zeroes_every_non_finite_client():
  updates, weights, count = finite_guard.guard_reference(
      ROUND, WEIGHTS, drop_weight=True)
  assert count == NUM_BAD
  for k in (1, 3, 4, 6, 7):
    assert all(np.all(t == 0) for t in updates[k])
  _allclose(updates[0], GOOD_SMALL)
  np.testing.assert_array_equal(weights, [2, 0, 3, 0, 0, 0, 0, 0])
  _, kept, _ = finite_guard.guard_reference(ROUND, WEIGHTS, drop_weight=False)
  # Zeroing keeps a finite weight; a NaN weight is never kept.
  np.testing.assert_array_equal(kept, [2, 1, 3, 1, 4, 0, 0, 0])
  _, no_weights, count = finite_guard.guard_reference(ROUND, None,
                                                      drop_weight=True)
  assert no_weights is None and count == 4  # the NaN weight is not seen


# ----------------------------------------------------------------------------
# Execution: the guarded processes against NumPy.
# ----------------------------------------------------------------------------


def test_clipping_drops_non_finite_updates(processes):
  output = _run(processes['clip'], ROUND, WEIGHTS)
  guarded, weights, bad = finite_guard.guard_reference(ROUND, WEIGHTS,
                                                       drop_weight=True)
  clipped = [_clip(u, CLIP) for u in guarded]
  _allclose(output.result, _weighted_mean([c for c, _ in clipped], weights))
  assert all(np.all(np.isfinite(t)) for t in output.result)
  m = output.measurements
  assert m['nonfinite_count'] == bad == NUM_BAD
  # TFF clips GOOD_LARGE (norm 5); the guard adds the non-finite ones.
  assert m['clipped_count'] == bad + sum(was for _, was in clipped) == 6
  assert m['clipping_norm'] == CLIP


def test_zeroing_zeroes_non_finite_updates_and_keeps_their_weight(processes):
  output = _run(processes['zero'], ROUND, WEIGHTS)
  guarded, weights, bad = finite_guard.guard_reference(ROUND, WEIGHTS,
                                                       drop_weight=False)
  threshold = 2 * ZEROING['initial_estimate'] + 1
  zeroed = [_zero(u, threshold) for u in guarded]
  _allclose(output.result, _weighted_mean([z for z, _ in zeroed], weights))
  m = output.measurements
  assert m['nonfinite_count'] == bad == NUM_BAD
  assert m['zeroed_count'] == NUM_BAD  # no finite norm is above 21
  assert m['zeroing_norm'] == pytest.approx(threshold)


@pytest.mark.parametrize('name', ['dp_fixed', 'dp_adaptive'])
def test_dp_clipping_never_sees_non_finite_updates(processes, name):
  output = _run(processes[name], ROUND)
  guarded, _, bad = finite_guard.guard_reference(ROUND, None,
                                                 drop_weight=True)
  # Noise 0: the DP mean is the sum of the clipped updates over the expected
  # number of clients.
  clipped = [_clip(u, CLIP)[0] for u in guarded]
  _allclose(output.result,
            [sum(c[k] for c in clipped) / CLIENTS_PER_ROUND for k in (0, 1)])
  assert output.measurements['nonfinite_count'] == bad == 4


def test_all_bad_rounds_give_a_zero_update(processes):
  """No division by zero: every client non-finite gives a zero update."""
  bad = [NAN_KERNEL, POS_INF_BIAS, NEG_INF_KERNEL]
  for name in ('clip', 'zero'):
    output = _run(processes[name], bad, [1.0, 2.0, 3.0])
    _allclose(output.result, [np.zeros((2, 2)), np.zeros(3)])
    assert output.measurements['nonfinite_count'] == 3
  for name in ('dp_fixed', 'dp_adaptive'):
    output = _run(processes[name], bad)
    _allclose(output.result, [np.zeros((2, 2)), np.zeros(3)])
    assert output.measurements['nonfinite_count'] == 3


def test_zero_weight_rounds_give_a_zero_update(processes):
  """Finite updates whose weights are all zero: the mean would be 0 / 0."""
  output = _run(processes['clip'], [GOOD_SMALL, GOOD_LARGE], [0.0, 0.0])
  _allclose(output.result, [np.zeros((2, 2)), np.zeros(3)])
  assert output.measurements['nonfinite_count'] == 0


def test_clean_rounds_are_unchanged(processes):
  """Finite updates: the guards change nothing, and count nothing."""
  updates, weights = [GOOD_SMALL, GOOD_LARGE], [1.0, 3.0]
  clipped = [_clip(u, CLIP)[0] for u in updates]
  output = _run(processes['clip'], updates, weights)
  _allclose(output.result, _weighted_mean(clipped, weights))
  assert output.measurements['nonfinite_count'] == 0
  assert output.measurements['clipped_count'] == 1
  output = _run(processes['zero'], updates, weights)
  _allclose(output.result, _weighted_mean(updates, weights))
  assert output.measurements['zeroed_count'] == 0


def _geometric_step(estimate, norms, quantile, learning_rate, denominator):
  """Andrew et al. 2021's geometric update, without noise."""
  below = sum(n <= estimate for n in norms) / denominator
  return estimate * math.exp(-learning_rate * (below - quantile))


def test_non_finite_updates_do_not_poison_the_zeroing_estimate(processes):
  """The estimate sees a zero norm (below) for a guarded client; unguarded,
  NaN/inf norms count as above and the estimate grows 1.51x a round."""
  process = processes['zero']
  updates = [GOOD_SMALL] * 8 + [NAN_KERNEL, POS_INF_BIAS]
  weights = [1.0] * 10
  norms = [_norm(GOOD_SMALL)] * 8 + [0.0, 0.0]
  estimate, state = ZEROING['initial_estimate'], None
  for _ in range(3):
    output = _run(process, updates, weights, state)
    state = output.state
    assert output.measurements['zeroing_norm'] == pytest.approx(
        2 * estimate + 1, rel=1e-5)
    assert output.measurements['zeroed_count'] == 2
    estimate = _geometric_step(estimate, norms, ZEROING['target_quantile'],
                               ZEROING['learning_rate'], len(norms))
  assert estimate < ZEROING['initial_estimate']
  # TFF's zeroing alone passes the NaN update, and its estimate grows.
  tff_zero = processes['tff_zero']
  output = _run(tff_zero, updates, weights)
  assert not all(np.all(np.isfinite(t)) for t in output.result)
  assert output.measurements['zeroed_count'] == 1  # the inf, not the NaN
  output = _run(tff_zero, updates, weights, output.state)
  grown = ZEROING['initial_estimate'] * math.exp(math.log(10.0) * 0.18)
  assert output.measurements['zeroing_norm'] == pytest.approx(
      2 * grown + 1, rel=1e-5)
  assert grown / ZEROING['initial_estimate'] == pytest.approx(1.513, abs=1e-3)


def test_tff_clipping_alone_lets_non_finite_updates_through(processes):
  for bad in (NAN_KERNEL, POS_INF_BIAS, NEG_INF_KERNEL):
    output = _run(processes['tff_clip'], [GOOD_SMALL, bad], [1.0, 1.0])
    assert not all(np.all(np.isfinite(t)) for t in output.result)


def test_non_finite_updates_do_not_poison_the_adaptive_dp_clip(processes):
  process = processes['dp_adaptive']
  updates = [GOOD_SMALL, GOOD_LARGE, NAN_KERNEL, NEG_INF_KERNEL]
  output = _run(process, updates)
  output = _run(process, updates, state=output.state)
  clip = _geometric_step(CLIP, [_norm(GOOD_SMALL), _norm(GOOD_LARGE), 0, 0],
                         DP_QUANTILE, DP_LEARNING_RATE, CLIENTS_PER_ROUND)
  # The second round clips at the adapted norm.
  guarded = [_clip(u, clip)[0] for u in finite_guard.guard_reference(
      updates, None, drop_weight=True)[0]]
  _allclose(output.result,
            [sum(c[k] for c in guarded) / CLIENTS_PER_ROUND for k in (0, 1)])
  assert np.isfinite(clip) and clip < CLIP


# ----------------------------------------------------------------------------
# Computation: type signatures.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['clip', 'zero'])
def test_weighted_guards_keep_the_types_of_the_wrapped_process(processes,
                                                               name):
  process = processes[name]
  assert process.is_weighted
  parameter = process.next.type_signature.parameter
  assert parameter.value == tff.FederatedType(VALUE_TYPE, tff.CLIENTS)
  assert parameter.weight == tff.FederatedType(WEIGHT_TYPE, tff.CLIENTS)
  result = process.next.type_signature.result
  assert result.result == tff.FederatedType(VALUE_TYPE, tff.SERVER)
  assert result.result.member.python_container is list
  measurements = result.measurements.member
  assert measurements[finite_guard.NONFINITE_COUNT] == tff.TensorType(
      np.int32)
  inner_names = {'clip': ['clipping', 'clipping_norm', 'clipped_count'],
                 'zero': ['zeroing', 'zeroing_norm', 'zeroed_count']}[name]
  assert [n for n, _ in tff.structure.iter_elements(measurements)] == [
      *inner_names, finite_guard.NONFINITE_COUNT]


@pytest.mark.parametrize('name', ['dp_fixed', 'dp_adaptive'])
def test_dp_guard_is_unweighted(processes, name):
  process = processes[name]
  assert not process.is_weighted
  parameter = process.next.type_signature.parameter
  assert parameter[1] == tff.FederatedType(VALUE_TYPE, tff.CLIENTS)
  result = process.next.type_signature.result
  assert result.result == tff.FederatedType(VALUE_TYPE, tff.SERVER)
  assert result.measurements.member[
      finite_guard.NONFINITE_COUNT] == tff.TensorType(np.int32)


def test_factories_check_their_inner_factories():
  weighted = tff.aggregators.MeanFactory()
  unweighted = tff.aggregators.SumFactory()
  assert isinstance(finite_guard.guard(weighted, drop_weight=True),
                    finite_guard.FiniteGuardFactory)
  assert isinstance(finite_guard.guard(unweighted, drop_weight=True),
                    finite_guard.UnweightedFiniteGuardFactory)
  with pytest.raises(TypeError, match='weighted factory'):
    finite_guard.FiniteGuardFactory(unweighted, drop_weight=True)
  with pytest.raises(TypeError, match='unweighted factory'):
    finite_guard.UnweightedFiniteGuardFactory(weighted)
  with pytest.raises(ValueError, match="count_into='clipped_count'"):
    finite_guard.FiniteGuardFactory(
        weighted, drop_weight=True, count_into='clipped_count').create(
            VALUE_TYPE, WEIGHT_TYPE)


def test_unnamed_inner_measurements_are_nested(tff_runtime):
  del tff_runtime
  process = finite_guard.guard(
      tff.aggregators.SumFactory(), drop_weight=True).create(
          tff.TensorType(np.float32, [2]))
  output = process.next(process.initialize(),
                        [np.array([1.0, 2.0], np.float32),
                         np.array([INF, 0.0], np.float32)])
  np.testing.assert_allclose(output.result, [1.0, 2.0])
  assert list(output.measurements) == ['inner', 'nonfinite_count']
  assert output.measurements['nonfinite_count'] == 1
