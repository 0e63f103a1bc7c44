"""Per-client records: updates, the population loss, checkpoint round-trip."""

import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline.scheduling import records


def test_new_records_know_nothing():
  r = records.ClientRecords.new(4)
  assert r.num_clients == 4
  assert np.all(np.isnan(r.last_loss)) and np.all(np.isnan(r.last_seconds))
  np.testing.assert_array_equal(r.last_round, [0, 0, 0, 0])
  np.testing.assert_array_equal(r.participations, [0, 0, 0, 0])
  assert not r.seen.any()


def test_updates_keep_the_last_known_values():
  r = records.ClientRecords.new(5)
  r1 = r.updated(1, [3, 1], losses=[2.5, 0.5], seconds=[10.0, 4.0])
  r2 = r1.updated(3, [1, 4], losses=[np.nan, 1.5], seconds=[np.inf, 7.0])
  # r1 is unchanged by the second update (records are values).
  np.testing.assert_array_equal(r1.last_round, [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(r2.last_round, [0, 3, 0, 1, 3])
  np.testing.assert_array_equal(r2.participations, [0, 2, 0, 1, 1])
  # Client 1 did not measure its loss in round 3: the round-1 value stays.
  np.testing.assert_array_equal(r2.last_loss,
                                [np.nan, 0.5, np.nan, 2.5, 1.5])
  np.testing.assert_array_equal(r2.last_seconds,
                                [np.nan, 4.0, np.nan, 10.0, 7.0])
  np.testing.assert_array_equal(r2.rounds_since_seen(5), [5, 2, 5, 4, 2])
  r3 = r2.updated(4, [0])
  np.testing.assert_array_equal(r3.last_loss, r2.last_loss)
  assert r3.participations[0] == 1


def test_with_losses_changes_only_the_losses():
  r = records.ClientRecords.new(3).updated(1, [0], losses=[2.0])
  fresh = r.with_losses([0, 2], [np.nan, 0.5])
  np.testing.assert_array_equal(fresh.last_loss, [2.0, np.nan, 0.5])
  np.testing.assert_array_equal(fresh.participations, r.participations)
  np.testing.assert_array_equal(fresh.last_round, r.last_round)


def test_weighted_mean_loss_uses_known_losses_weighted_by_data():
  r = records.ClientRecords.new(4).updated(1, [0, 2, 3],
                                           losses=[1.0, 4.0, np.nan])
  sizes = np.array([10, 99, 30, 5])
  assert records.weighted_mean_loss(r, sizes) == pytest.approx(
      (10 * 1.0 + 30 * 4.0) / 40)
  assert np.isnan(records.weighted_mean_loss(records.ClientRecords.new(4),
                                             sizes))


def test_round_trip_is_bitwise():
  r = records.ClientRecords.new(6).updated(
      2, [5, 0, 3], losses=[0.1 + 0.2, 1e-300, np.nan],
      seconds=[1 / 3, 2.0, 5.5]).updated(7, [3], losses=[np.pi])
  arrays = r.to_arrays()
  assert sorted(arrays) == ['records/last_loss', 'records/last_round',
                            'records/last_seconds', 'records/participations']
  back = records.ClientRecords.from_arrays(arrays, 6)
  assert back == r
  for name in records.FIELDS:
    assert (getattr(back, name).tobytes() == getattr(r, name).tobytes())
    assert getattr(back, name).dtype == getattr(r, name).dtype
  # A checkpoint may hand back other array types that convert exactly.
  loose = {k: v.tolist() for k, v in arrays.items()}
  assert records.ClientRecords.from_arrays(loose, 6) == r


def test_from_arrays_rejects_other_populations_and_missing_fields():
  arrays = records.ClientRecords.new(3).to_arrays()
  with pytest.raises(errors.CheckpointError, match='population of 4'):
    records.ClientRecords.from_arrays(arrays, 4)
  del arrays['records/participations']
  with pytest.raises(errors.CheckpointError, match='participations'):
    records.ClientRecords.from_arrays(arrays, 3)
  bad = records.ClientRecords.new(2).to_arrays()
  bad['records/last_round'] = np.array([0.5, 1.0])
  with pytest.raises(errors.CheckpointError, match='last_round'):
    records.ClientRecords.from_arrays(bad, 2)


@pytest.mark.parametrize('kwargs, match', [
    (dict(round_num=0, client_indices=[0]), 'round 0'),
    (dict(round_num=1, client_indices=[3]), 'outside'),
    (dict(round_num=1, client_indices=[-1]), 'outside'),
    (dict(round_num=1, client_indices=[1, 1]), 'repeated'),
    (dict(round_num=1, client_indices=[0, 1], losses=[1.0]), '1 losses'),
    (dict(round_num=1, client_indices=[0], seconds=[1.0, 2.0]), '2 seconds'),
])
def test_bad_updates(kwargs, match):
  with pytest.raises(ValueError, match=match):
    records.ClientRecords.new(3).updated(**kwargs)


def test_rounds_cannot_go_back():
  r = records.ClientRecords.new(3).updated(5, [0])
  with pytest.raises(ValueError, match='before the recorded round 5'):
    r.updated(4, [1])


def test_bad_construction():
  with pytest.raises(ValueError, match='num_clients'):
    records.ClientRecords.new(0)
  r = records.ClientRecords.new(2)
  with pytest.raises(ValueError, match='last_round'):
    records.ClientRecords(r.last_loss, r.last_round.astype(np.float64),
                          r.participations, r.last_seconds)
  with pytest.raises(ValueError, match='lengths'):
    records.ClientRecords(r.last_loss, np.zeros(3, np.int64),
                          r.participations, r.last_seconds)
