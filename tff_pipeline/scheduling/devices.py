"""Per-client devices: compute speed and up/down bandwidth.

Each client k has a device: `gflops[k]` (the FLOP/s it sustains while
training, in GFLOP/s), and `up_mbps[k]`, `down_mbps[k]` (bandwidth in
Mbit/s). `clock.py` turns them into seconds. The profile (`--device_profile`):

  * `capacity` (the default): speed = `--device_gflops` times the client's
    capacity from `--capacity_profile` (`heterogeneity.py`: `none`,
    `uniform`, `minority`), so a client at capacity 0.2 computes at a fifth of
    the speed; every client has `--up_bandwidth_mbps` and
    `--down_bandwidth_mbps`.
  * `lognormal`: speed and both bandwidths are the flag values times
    independent log-normal factors exp(sigma * z), z ~ N(0, 1), sigma =
    `--device_lognormal_sigma` (a heavy right tail, as in the device traces
    that FedScale samples from).
  * `file`: one row per client from `--device_file`, a CSV with the header
    `client,gflops,up_mbps,down_mbps` or a JSON list of objects with those
    keys; `client` is the client's index 0..num_clients-1, each exactly once.

Every draw is a pure function of (seed, client), like the capacity profiles.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import heterogeneity
from tff_pipeline import registry

# Separates the device streams from the other streams derived from --seed.
_SPEED_STREAM = 0x4445_5653
_UP_STREAM = 0x4445_5655
_DOWN_STREAM = 0x4445_5644

COLUMNS = ('client', 'gflops', 'up_mbps', 'down_mbps')


@dataclasses.dataclass(frozen=True)
class Devices:
  """The devices of all clients, indexed by client index.

  Attributes:
    gflops: Training speed, GFLOP/s.
    up_mbps: Upload bandwidth, Mbit/s.
    down_mbps: Download bandwidth, Mbit/s.
  """

  gflops: np.ndarray
  up_mbps: np.ndarray
  down_mbps: np.ndarray

  def __len__(self) -> int:
    return len(self.gflops)


DeviceProfile = Callable[[config_lib.TrainingConfig, int], Devices]
"""(config, number of clients) -> the clients' devices."""
DEVICE_PROFILES: registry.Registry[DeviceProfile] = registry.Registry(
    'device profile', '--device_profile')


def _constant(value: float, num_clients: int) -> np.ndarray:
  return np.full(num_clients, float(value))


@DEVICE_PROFILES.register(
    'capacity', 'speed = --device_gflops * the --capacity_profile capacity; '
    'equal bandwidths')
def capacity_devices(config: config_lib.TrainingConfig,
                     num_clients: int) -> Devices:
  s = config.scheduling
  capacity = np.array([
      config.heterogeneity.capacity(config.seed, k, num_clients)
      for k in range(num_clients)])
  return Devices(gflops=s.device_gflops * capacity,
                 up_mbps=_constant(s.up_bandwidth_mbps, num_clients),
                 down_mbps=_constant(s.down_bandwidth_mbps, num_clients))


def lognormal_factor(seed: int, stream: int, client_index: int,
                     sigma: float) -> float:
  """exp(sigma * z), z ~ N(0, 1) drawn from (seed, stream, client)."""
  rng = np.random.default_rng([seed, stream, client_index])
  return float(np.exp(sigma * rng.standard_normal()))


@DEVICE_PROFILES.register(
    'lognormal', 'speed and bandwidths = the flag values * independent '
    'log-normal factors (--device_lognormal_sigma)')
def lognormal_devices(config: config_lib.TrainingConfig,
                      num_clients: int) -> Devices:
  s = config.scheduling

  def draw(stream: int, value: float) -> np.ndarray:
    return np.array([
        value * lognormal_factor(config.seed, stream, k,
                                 s.device_lognormal_sigma)
        for k in range(num_clients)])

  return Devices(gflops=draw(_SPEED_STREAM, s.device_gflops),
                 up_mbps=draw(_UP_STREAM, s.up_bandwidth_mbps),
                 down_mbps=draw(_DOWN_STREAM, s.down_bandwidth_mbps))


@DEVICE_PROFILES.register(
    'file', 'one row per client from --device_file (CSV or JSON: client, '
    'gflops, up_mbps, down_mbps)')
def file_devices(config: config_lib.TrainingConfig,
                 num_clients: int) -> Devices:
  return read_device_file(config.scheduling.device_file, num_clients)


def _read_rows(path: str) -> list[Mapping[str, Any]]:
  where = f'--device_file {path}'
  if not os.path.isfile(path):
    raise errors.DataError(f'{where}: no such file')
  try:
    with open(path, newline='') as f:
      if path.lower().endswith('.json'):
        rows = json.load(f)
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) for r in rows):
          raise errors.DataError(
              f'{where}: expected a JSON list of objects with keys '
              f'{", ".join(COLUMNS)}')
        return rows
      reader = csv.DictReader(f)
      missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
      if missing:
        raise errors.DataError(
            f'{where}: missing column(s) {", ".join(missing)}; the header '
            f'must be {",".join(COLUMNS)}')
      return list(reader)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError,
          csv.Error) as e:
    raise errors.DataError(f'{where}: unreadable ({e})') from None


def _number(row: Mapping[str, Any], key: str, where: str) -> float:
  try:
    value = float(row[key])
  except KeyError:
    raise errors.DataError(f'{where}: missing column {key}') from None
  except (TypeError, ValueError):
    raise errors.DataError(
        f'{where}: {key}={row[key]!r} is not a number') from None
  return value


def read_device_file(path: str, num_clients: int) -> Devices:
  """The devices of `num_clients` clients from a CSV or JSON device file.

  Raises:
    errors.DataError: naming the file (and the row) for a missing column, a
      value that is not a positive finite number, a client index out of
      range or repeated, or a client count other than `num_clients`.
  """
  rows = _read_rows(path)
  if len(rows) != num_clients:
    raise errors.DataError(
        f'--device_file {path}: {len(rows)} devices for --num_clients='
        f'{num_clients}; give one row per client')
  values = np.full((num_clients, 3), np.nan)
  for line, row in enumerate(rows, start=1):
    where = f'--device_file {path} row {line}'
    index = _number(row, 'client', where)
    if not (index.is_integer() and 0 <= index < num_clients):
      raise errors.DataError(
          f'{where}: client={row["client"]!r} must be an index in '
          f'0..{num_clients - 1}')
    index = int(index)
    if not np.isnan(values[index, 0]):
      raise errors.DataError(f'{where}: client {index} is listed twice')
    for column, key in enumerate(COLUMNS[1:]):
      value = _number(row, key, where)
      if not (math.isfinite(value) and value > 0):
        raise errors.DataError(
            f'{where}: {key}={row[key]!r} must be a positive finite number')
      values[index, column] = value
  return Devices(gflops=values[:, 0], up_mbps=values[:, 1],
                 down_mbps=values[:, 2])


def write_device_file(path: str, devices: Devices) -> None:
  """Writes `devices` as a CSV device file (the format `read_device_file`
  reads), e.g. to edit a generated profile by hand."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for k in range(len(devices)):
      writer.writerow([k, repr(float(devices.gflops[k])),
                       repr(float(devices.up_mbps[k])),
                       repr(float(devices.down_mbps[k]))])


def build_devices(config: config_lib.TrainingConfig,
                  num_clients: int) -> Devices:
  """The devices of the run's clients, as `--device_profile` says."""
  return DEVICE_PROFILES.get(config.scheduling.device_profile)(
      config, num_clients)


def minority(config: config_lib.TrainingConfig,
             num_clients: int) -> Sequence[int] | None:
  """The slow minority's client indices under `--capacity_profile=minority`
  (None otherwise), for the share of it in each round."""
  if config.heterogeneity.capacity_profile != 'minority':
    return None
  return heterogeneity.minority_clients(
      num_clients, config.heterogeneity.slow_client_fraction,
      config.seed).tolist()
