"""The simulated clock: how long a client's round takes on its device.

As in FedScale (Lai et al., "FedScale: Benchmarking Model and System
Performance of Federated Learning at Scale", ICML 2022) and Oort (Lai et al.,
"Oort: Efficient Federated Learning via Guided Participant Selection",
OSDI 2021), a client's time in a round is its compute plus its
communication:

  seconds = local steps * seconds per step
            + broadcast bytes / down bandwidth + upload bytes / up bandwidth

with seconds per step = FLOPs per step / the device's FLOP/s
(`devices.Devices`), and the bytes those the pipeline already counts after
compression (`aggregators/communication.payload`). Everything here is NumPy
arithmetic on arrays of clients; no TensorFlow.
"""

from __future__ import annotations

import numpy as np

BITS_PER_BYTE = 8
MEGA = 1e6
GIGA = 1e9


def bytes_per_second(megabits_per_second: np.ndarray | float) -> np.ndarray:
  """Mbit/s (how bandwidth is quoted) -> bytes/s."""
  return np.asarray(megabits_per_second, np.float64) * MEGA / BITS_PER_BYTE


def seconds_per_step(flops_per_step: np.ndarray | float,
                     gflops_per_second: np.ndarray | float) -> np.ndarray:
  """Compute seconds of one local step: its FLOPs / the device's FLOP/s."""
  return (np.asarray(flops_per_step, np.float64)
          / (np.asarray(gflops_per_second, np.float64) * GIGA))


def communication_seconds(
    broadcast_bytes: float,
    upload_bytes: float,
    down_mbps: np.ndarray | float,
    up_mbps: np.ndarray | float,
) -> np.ndarray:
  """Seconds to receive the global model and send the update back."""
  return (broadcast_bytes / bytes_per_second(down_mbps)
          + upload_bytes / bytes_per_second(up_mbps))


def client_seconds(
    steps: np.ndarray | float,
    step_seconds: np.ndarray | float,
    comm_seconds: np.ndarray | float,
) -> np.ndarray:
  """A client's time in a round: steps * seconds per step + communication."""
  return (np.asarray(steps, np.float64) * np.asarray(step_seconds, np.float64)
          + np.asarray(comm_seconds, np.float64))
