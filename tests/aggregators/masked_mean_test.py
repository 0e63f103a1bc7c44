"""The masked mean (HeteroFL): NumPy reference, types, values, and FedAvg's
weighted mean when every client holds every coordinate."""

import collections

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline import client_reports
from tff_pipeline.aggregators import masked_mean
from tff_pipeline.models import width

DELTA_TYPE = tff.StructWithPythonType([
    ('a', tff.TensorType(np.float32, [2, 3])),
    ('b', tff.TensorType(np.float32, [3])),
], collections.OrderedDict)
# Our client work's full report, with the mask added.
VALUE_TYPE = tff.StructWithPythonType([
    (client_reports.MODEL_DELTA, DELTA_TYPE),
    (client_reports.LOCAL_STEPS, tff.TensorType(np.float32)),
    (client_reports.PRE_TRAINING_LOSS, tff.TensorType(np.float32)),
    (client_reports.COORDINATE_MASK, DELTA_TYPE),
], collections.OrderedDict)
WEIGHT_TYPE = tff.TensorType(np.float32)
NUM_COORDINATES = 9

# ---- The NumPy reference against hand-computed numbers. ----


def test_reference_by_hand():
  deltas = [[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0],
            [100.0, 200.0, 300.0, 400.0]]
  masks = [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]]
  mean, m = masked_mean.masked_mean(deltas, masks, [1, 2, 1])
  # Coordinate 0: all three, (1 + 2 * 10 + 100) / 4; coordinate 1: clients
  # 0 and 2, (2 + 200) / 2; coordinate 2: client 2 alone; 3: nobody.
  np.testing.assert_allclose(mean, [121 / 4, 101.0, 300.0, 0.0])
  assert m == {'num_dropped': 0, 'num_uncovered': 1}


def test_reference_drops_zero_weight_and_non_finite_clients():
  deltas = [[1.0, 1.0], [50.0, 50.0], [np.nan, 7.0], [3.0, 3.0], [9.0, 9.0]]
  masks = [[1, 0], [1, 1], [1, 1], [1, np.inf], [1, 1]]
  mean, m = masked_mean.masked_mean(deltas, masks, [1, 0, 5, 1, np.nan])
  # Only client 0 is kept; nobody kept holds coordinate 1.
  np.testing.assert_array_equal(mean, [1.0, 0.0])
  assert m == {'num_dropped': 4, 'num_uncovered': 1}


# ---- The TFF process: types, then values against the reference. ----

@pytest.fixture(scope='module')
def process(tff_runtime):
  del tff_runtime
  return masked_mean.MaskedMeanFactory().create(VALUE_TYPE, WEIGHT_TYPE)


def test_type_signature(process):
  signature = process.next.type_signature
  assert signature.parameter[1] == tff.FederatedType(VALUE_TYPE, tff.CLIENTS)
  assert signature.parameter[2] == tff.FederatedType(WEIGHT_TYPE, tff.CLIENTS)
  assert signature.result.result == tff.FederatedType(DELTA_TYPE, tff.SERVER)
  measurements = signature.result.measurements
  assert measurements.placement is tff.SERVER
  assert tff.structure.name_list(measurements.member) == [
      'masked_mean', 'value_sum', 'weight_sum']
  counts = measurements.member.masked_mean
  assert tff.structure.name_list(counts) == ['num_dropped', 'num_uncovered']
  assert all(t == tff.TensorType(np.int32) for t in counts)


def test_it_declares_the_full_report_with_masks():
  factory = masked_mean.MaskedMeanFactory()
  assert client_reports.needs_of(factory) == client_reports.ClientWorkNeeds(
      full_report=True, coordinate_mask=True,
      weighting=client_reports.WEIGHT_BY_EXAMPLES_PROCESSED)
  assert client_reports.for_reported_updates(factory) is factory
  with pytest.raises(ValueError, match='coordinate_mask is part of the full'):
    client_reports.ClientWorkNeeds(coordinate_mask=True)


@pytest.mark.parametrize('value_type, message', [
    # Today's full report, without masks: the client work is not HeteroFL's.
    (tff.StructWithPythonType(
        [(client_reports.MODEL_DELTA, DELTA_TYPE),
         (client_reports.LOCAL_STEPS, tff.TensorType(np.float32))],
        collections.OrderedDict), "needs client reports with 'model_delta' "
     "and 'coordinate_mask'"),
    (DELTA_TYPE, 'needs client reports'),
    (tff.StructWithPythonType(
        [(client_reports.MODEL_DELTA, DELTA_TYPE),
         (client_reports.COORDINATE_MASK,
          tff.StructWithPythonType([('a', tff.TensorType(np.float32, [2, 3]))],
                                   collections.OrderedDict))],
        collections.OrderedDict), "'coordinate_mask' must have the tensor "
     "types of 'model_delta'"),
])
def test_reports_without_a_matching_mask_are_refused(value_type, message):
  with pytest.raises(TypeError, match=message):
    masked_mean.MaskedMeanFactory().create(value_type, WEIGHT_TYPE)


def test_inner_sums_must_be_unweighted_factories():
  with pytest.raises(TypeError, match='value_sum_factory must be an '
                     'unweighted'):
    masked_mean.MaskedMeanFactory(
        value_sum_factory=tff.aggregators.MeanFactory())


def _reports(a, b, mask_a, mask_b):
  return [
      collections.OrderedDict([
          (client_reports.MODEL_DELTA, collections.OrderedDict(a=da, b=db)),
          (client_reports.LOCAL_STEPS, np.float32(1)),
          (client_reports.PRE_TRAINING_LOSS, np.float32(0)),
          (client_reports.COORDINATE_MASK,
           collections.OrderedDict(a=ma, b=mb)),
      ])
      for da, db, ma, mb in zip(a, b, mask_a, mask_b)
  ]


def _clients(case):
  """Four clients' deltas, masks and weights; a[:, 1, 2] is held by nobody."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4, 2, 3)).astype(np.float32)
  b = rng.normal(size=(4, 3)).astype(np.float32)
  mask_a = (rng.uniform(size=a.shape) < 0.6).astype(np.float32)
  mask_b = (rng.uniform(size=b.shape) < 0.6).astype(np.float32)
  mask_a[:, 1, 2] = 0.0
  weights = np.array([10, 20, 30, 40], np.float32)
  if case == 'zero_weight':
    weights[1] = 0.0
    a[1] += 1e3  # Would show in the mean were the client counted.
  elif case == 'nan_delta':
    a[2, 0, 0] = np.nan
  elif case == 'inf_mask':
    mask_b[3, 0] = np.inf
  elif case == 'nobody_kept':
    weights[:] = 0.0
  return a, b, mask_a, mask_b, weights


def _flat(a, b):
  return np.concatenate([np.reshape(a, (len(a), -1)), b], axis=1)


@pytest.mark.parametrize('case', ['uncovered', 'zero_weight', 'nan_delta',
                                  'inf_mask', 'nobody_kept'])
def test_values_match_the_numpy_reference(process, case):
  a, b, mask_a, mask_b, weights = _clients(case)
  output = process.next(process.initialize(),
                        _reports(a, b, mask_a, mask_b), list(weights))
  expected, measurements = masked_mean.masked_mean(
      _flat(a, b), _flat(mask_a, mask_b), weights)
  got = _flat(output.result['a'][np.newaxis], output.result['b'][np.newaxis])
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got[0], expected, rtol=1e-6, atol=1e-6)
  assert output.measurements['masked_mean'] == measurements
  assert output.result['a'][1, 2] == 0.0
  if case == 'nobody_kept':
    assert measurements['num_uncovered'] == NUM_COORDINATES
    np.testing.assert_array_equal(got, 0.0)


def test_all_ones_masks_give_the_weighted_mean(process):
  a, b, _, _, weights = _clients('uncovered')
  ones_a, ones_b = np.ones_like(a), np.ones_like(b)
  output = process.next(process.initialize(),
                        _reports(a, b, ones_a, ones_b), list(weights))
  mean = tff.aggregators.MeanFactory().create(DELTA_TYPE, WEIGHT_TYPE)
  expected = mean.next(
      mean.initialize(),
      [collections.OrderedDict(a=x, b=y) for x, y in zip(a, b)],
      list(weights)).result
  for name in ('a', 'b'):
    np.testing.assert_allclose(output.result[name], expected[name],
                               rtol=1e-6, atol=1e-6)
  assert output.measurements['masked_mean'] == {'num_dropped': 0,
                                                'num_uncovered': 0}


def test_sub_model_updates_from_width_scatter(tff_runtime):
  """The data flow of HeteroFL: sub-model updates scattered with their masks.

  A 4 -> 8 -> 3 dense model, clients of widths 1, 0.5 and 0.25: the hidden
  units 0-1 are averaged over all three, 2-3 over the two widest, 4-7 come
  from the full-width client alone.
  """
  del tff_runtime
  spec = width.spec_of_layers([
      width.LayerInfo('Dense', ((4, 8), (8,))),
      width.LayerInfo('Dense', ((8, 3), (3,)))])
  rng = np.random.default_rng(2)
  widths, weights = [1.0, 0.5, 0.25], [3.0, 1.0, 2.0]
  deltas, masks = [], []
  for w in widths:
    sub = [rng.normal(size=s).astype(np.float32)
           for s in width.sub_shapes(spec, w)]
    full, mask = width.scatter(sub, spec, w)
    deltas.append(full)
    masks.append(mask)
  delta_type = tff.types.to_type(
      [tff.TensorType(np.float32, s) for s in spec.shapes])
  value_type = tff.types.to_type(collections.OrderedDict([
      (client_reports.MODEL_DELTA, delta_type),
      (client_reports.COORDINATE_MASK, delta_type)]))
  process = masked_mean.MaskedMeanFactory().create(value_type, WEIGHT_TYPE)
  output = process.next(
      process.initialize(),
      [collections.OrderedDict([(client_reports.MODEL_DELTA, d),
                                (client_reports.COORDINATE_MASK, m)])
       for d, m in zip(deltas, masks)],
      weights)
  for i, got in enumerate(output.result):
    expected, _ = masked_mean.masked_mean(
        [d[i] for d in deltas], [m[i] for m in masks], weights)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  # The output bias is held by everyone: the plain weighted mean.
  np.testing.assert_allclose(
      output.result[3], np.average([d[3] for d in deltas], axis=0,
                                   weights=weights), rtol=1e-6)
  # Hidden unit 5 (kernel column, bias) comes from the full-width client.
  np.testing.assert_allclose(output.result[0][:, 5], deltas[0][0][:, 5])
  assert output.measurements['masked_mean']['num_uncovered'] == 0


def test_a_secure_sum_can_stand_in_for_the_sums(tff_runtime):
  # SecureSumFactory clips each client's value to its bounds and quantizes
  # it (the protocol itself is not simulated, BUILD.md): the mean is the
  # reference's to the quantization step, and a coordinate nobody holds
  # still gets exactly 0.
  del tff_runtime
  secure = masked_mean.MaskedMeanFactory(
      value_sum_factory=tff.aggregators.SecureSumFactory(
          upper_bound_threshold=1e3, lower_bound_threshold=-1e3),
      weight_sum_factory=tff.aggregators.SecureSumFactory(
          upper_bound_threshold=1e3, lower_bound_threshold=0.0),
  ).create(VALUE_TYPE, WEIGHT_TYPE)
  a, b, mask_a, mask_b, weights = _clients('uncovered')
  output = secure.next(secure.initialize(),
                       _reports(a, b, mask_a, mask_b), list(weights))
  expected, measurements = masked_mean.masked_mean(
      _flat(a, b), _flat(mask_a, mask_b), weights)
  got = _flat(output.result['a'][np.newaxis], output.result['b'][np.newaxis])
  np.testing.assert_allclose(got[0], expected, atol=1e-3)
  assert output.result['a'][1, 2] == 0.0
  assert output.measurements['masked_mean'] == measurements
