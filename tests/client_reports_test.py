"""What client work reports, what factories declare, and the delta adapter."""

import collections

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline import client_reports
from tff_pipeline.aggregators import compensation

DELTA_TYPE = tff.StructWithPythonType(
    [('a', tff.TensorType(np.float32, [2])), ('b', tff.TensorType(np.float32))],
    collections.OrderedDict)
REPORT_TYPE = tff.StructWithPythonType([
    (client_reports.MODEL_DELTA, DELTA_TYPE),
    (client_reports.LOCAL_STEPS, tff.TensorType(np.float32)),
    (client_reports.PRE_TRAINING_LOSS, tff.TensorType(np.float32)),
], collections.OrderedDict)


def test_a_factory_without_a_declaration_needs_the_model_delta_only():
  mean = tff.aggregators.MeanFactory()
  assert client_reports.needs_of(mean) == client_reports.MODEL_DELTA_ONLY
  assert client_reports.MODEL_DELTA_ONLY == client_reports.ClientWorkNeeds(
      full_report=False, pre_training_loss=False,
      weighting=client_reports.WEIGHT_BY_EXAMPLES_PROCESSED)
  adapted = client_reports.for_reported_updates(mean)
  assert isinstance(adapted, client_reports.ModelDeltaOnlyFactory)


@pytest.mark.parametrize('q, loss', [(0.0, False), (0.5, True)])
def test_the_compensated_factory_declares_the_full_report(q, loss):
  factory = compensation.CompensatedFactory(loss_power=q)
  assert client_reports.needs_of(factory) == client_reports.ClientWorkNeeds(
      full_report=True, pre_training_loss=loss,
      weighting=client_reports.WEIGHT_BY_DATA_SIZE)
  assert client_reports.for_reported_updates(factory) is factory


def test_bad_declarations_are_refused():
  with pytest.raises(ValueError, match='unknown weighting'):
    client_reports.ClientWorkNeeds(weighting='loudest')
  with pytest.raises(ValueError, match='part of the full report'):
    client_reports.ClientWorkNeeds(pre_training_loss=True)

  class Confused(tff.aggregators.MeanFactory):
    client_work_needs = 'everything'

  with pytest.raises(TypeError, match='must be a ClientWorkNeeds'):
    client_reports.needs_of(Confused())


def test_model_delta_only_gives_the_weighted_mean_of_the_deltas(tff_runtime):
  del tff_runtime
  process = client_reports.ModelDeltaOnlyFactory(
      tff.aggregators.MeanFactory()).create(REPORT_TYPE,
                                            tff.TensorType(np.float32))
  deltas = [(np.array([1.0, 2.0]), 3.0), (np.array([-4.0, 0.5]), -1.0)]
  weights = [1.0, 3.0]
  reports = [collections.OrderedDict([
      (client_reports.MODEL_DELTA, collections.OrderedDict(
          a=a.astype(np.float32), b=np.float32(b))),
      # Whatever tau_i and L_i say, only the delta is aggregated.
      (client_reports.LOCAL_STEPS, np.float32(7.0 * (k + 1))),
      (client_reports.PRE_TRAINING_LOSS, np.float32(np.nan)),
  ]) for k, (a, b) in enumerate(deltas)]
  output = process.next(process.initialize(), reports,
                        [np.float32(w) for w in weights])
  expected_a = sum(w * a for w, (a, _) in zip(weights, deltas)) / sum(weights)
  expected_b = sum(w * b for w, (_, b) in zip(weights, deltas)) / sum(weights)
  np.testing.assert_allclose(output.result['a'], expected_a, rtol=1e-6)
  assert output.result['b'] == pytest.approx(expected_b, rel=1e-6)
