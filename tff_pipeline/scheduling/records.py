"""The server's record of every client: what selection and feedback know.

The design this pipeline implements has the server keep, per client, what it
learnt the last time the client took part, and feed it back into the next
rounds (client selection, `selection.py`; more local work for lagging
clients, `feedback.py`). A record holds, for client k of the population:

  last_loss       the loss of the global model on the client's data, before
                  its local training, the last time it was measured (NaN:
                  never measured);
  last_round      the last round the client took part in (0: never);
  participations  how many rounds it took part in;
  last_seconds    its simulated duration in that round (NaN: never).

Records change only through `updated`, once per round, after the round; they
are part of the checkpointed program state (`to_arrays` / `from_arrays`, a
bitwise round-trip), so a resumed run selects as an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from tff_pipeline import errors

PREFIX = 'records/'
"""Key prefix of the records' arrays in a checkpoint."""

_DTYPES = {
    'last_loss': np.float64,
    'last_round': np.int64,
    'participations': np.int64,
    'last_seconds': np.float64,
}
FIELDS = tuple(_DTYPES)


@dataclasses.dataclass(frozen=True, eq=False)
class ClientRecords:
  """Per-client records of a population of `num_clients` clients.

  Attributes are arrays of length `num_clients`, indexed like the task's
  `client_ids`; treat them as read-only.
  """

  last_loss: np.ndarray
  last_round: np.ndarray
  participations: np.ndarray
  last_seconds: np.ndarray

  def __post_init__(self):
    lengths = set()
    for name, dtype in _DTYPES.items():
      value = getattr(self, name)
      if not (isinstance(value, np.ndarray) and value.ndim == 1
              and value.dtype == dtype):
        raise ValueError(f'records: {name} must be a 1-D {np.dtype(dtype)} '
                         f'array, got {value!r}')
      lengths.add(value.shape[0])
    if len(lengths) != 1:
      raise ValueError(f'records: arrays of different lengths {lengths}')

  @classmethod
  def new(cls, num_clients: int) -> ClientRecords:
    """The records of a population nothing is known about yet."""
    if num_clients < 1:
      raise ValueError(f'records need num_clients >= 1, got {num_clients}')
    return cls(last_loss=np.full(num_clients, np.nan),
               last_round=np.zeros(num_clients, np.int64),
               participations=np.zeros(num_clients, np.int64),
               last_seconds=np.full(num_clients, np.nan))

  @property
  def num_clients(self) -> int:
    return int(self.last_round.shape[0])

  @property
  def seen(self) -> np.ndarray:
    """Whether each client has taken part in a round (bool array)."""
    return self.participations > 0

  def updated(
      self,
      round_num: int,
      client_indices: Sequence[int] | np.ndarray,
      *,
      losses: Sequence[float] | np.ndarray | None = None,
      seconds: Sequence[float] | np.ndarray | None = None,
  ) -> ClientRecords:
    """The records after round `round_num`, in which `client_indices` took part.

    Args:
      round_num: The round (1-based); not earlier than any recorded round.
      client_indices: Distinct indices of the round's clients.
      losses: Each client's loss before training, in the same order; a
        non-finite value (a client that did not measure it) keeps the
        previous record. None: no losses were measured this round.
      seconds: Each client's simulated duration in the round; non-finite
        values keep the previous record.

    Returns:
      New records; `self` is not changed.
    """
    indices = np.asarray(client_indices, dtype=np.int64).reshape(-1)
    if round_num < 1 or round_num < int(self.last_round.max(initial=0)):
      raise ValueError(f'records: round {round_num} is before the recorded '
                       f'round {int(self.last_round.max(initial=0))}')
    if indices.size and (indices.min() < 0
                         or indices.max() >= self.num_clients):
      raise ValueError(f'records: client indices {indices.tolist()} outside '
                       f'[0, {self.num_clients})')
    if np.unique(indices).size != indices.size:
      raise ValueError(f'records: repeated client indices {indices.tolist()}')
    last_round = self.last_round.copy()
    participations = self.participations.copy()
    last_round[indices] = round_num
    participations[indices] += 1
    return ClientRecords(
        last_loss=_replaced(self.last_loss, indices, losses, 'losses'),
        last_round=last_round, participations=participations,
        last_seconds=_replaced(self.last_seconds, indices, seconds,
                               'seconds'))

  def with_losses(self, client_indices: Sequence[int] | np.ndarray,
                  losses: Sequence[float] | np.ndarray) -> ClientRecords:
    """These records with fresher finite `losses` of some clients.

    Nothing else changes (no participation is counted): for a loss measured
    before a round, used within it (`feedback.apply`).
    """
    indices = np.asarray(client_indices, dtype=np.int64).reshape(-1)
    return dataclasses.replace(
        self, last_loss=_replaced(self.last_loss, indices, losses, 'losses'))

  def rounds_since_seen(self, round_num: int) -> np.ndarray:
    """round_num - last_round; for a client never seen, round_num."""
    return round_num - self.last_round

  def to_arrays(self) -> dict[str, np.ndarray]:
    """The records as `{'records/<field>': array}`, for the checkpoint."""
    return {PREFIX + name: getattr(self, name).copy() for name in FIELDS}

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray],
                  num_clients: int) -> ClientRecords:
    """Inverse of `to_arrays`; checks the arrays against the population.

    Raises:
      errors.CheckpointError: if a field is missing, or has the wrong
        length or a type that does not convert exactly.
    """
    values = {}
    for name, dtype in _DTYPES.items():
      key = PREFIX + name
      if key not in arrays:
        raise errors.CheckpointError(
            f'the checkpoint has no client records ({key} is missing)')
      value = np.asarray(arrays[key])
      converted = value.astype(dtype)
      if (value.shape != (num_clients,)
          or not np.array_equal(converted, value, equal_nan=True)):
        raise errors.CheckpointError(
            f'the checkpoint\'s client records ({key}, shape {value.shape}) '
            f'do not fit a population of {num_clients} clients')
      values[name] = converted
    return cls(**values)

  def __eq__(self, other: object) -> bool:
    """Bitwise equality of every field (NaN equals NaN)."""
    if not isinstance(other, ClientRecords):
      return NotImplemented
    return all(
        np.array_equal(getattr(self, name), getattr(other, name),
                       equal_nan=np.issubdtype(_DTYPES[name], np.floating))
        for name in FIELDS)


def _replaced(old: np.ndarray, indices: np.ndarray,
              values: Sequence[float] | np.ndarray | None,
              what: str) -> np.ndarray:
  """`old` with its finite `values` written at `indices`."""
  new = old.copy()
  if values is None:
    return new
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  if values.shape != indices.shape:
    raise ValueError(f'records: {values.size} {what} for {indices.size} '
                     'clients')
  finite = np.isfinite(values)
  new[indices[finite]] = values[finite]
  return new


def weighted_mean_loss(records: ClientRecords,
                       num_examples: np.ndarray) -> float:
  """The population's loss: the data-weighted mean of the known losses.

  Weighted by n_k, as the compensated aggregator's Lbar is
  (`aggregators/compensation.py`); NaN when no loss is known.
  """
  known = np.isfinite(records.last_loss)
  weights = np.asarray(num_examples, np.float64)[known]
  if not known.any() or weights.sum() <= 0:
    return float('nan')
  return float(np.sum(weights * records.last_loss[known]) / weights.sum())
