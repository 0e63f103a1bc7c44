"""The simulated clock against a plain-Python reference."""

import numpy as np
import pytest

from tff_pipeline.scheduling import clock


def _reference_seconds(steps, flops_per_step, gflops, broadcast_bytes,
                       upload_bytes, down_mbps, up_mbps):
  compute = steps * flops_per_step / (gflops * 1e9)
  download = broadcast_bytes / (down_mbps * 1e6 / 8)
  upload = upload_bytes / (up_mbps * 1e6 / 8)
  return compute + download + upload


@pytest.mark.parametrize('steps,flops_per_step,gflops,down,up', [
    (120, 3.6e7, 1.0, 20.0, 5.0),
    (1, 1.0, 1e-3, 1e-3, 1e-3),
    (0, 5e9, 2.5, 100.0, 1.0),
])
def test_client_seconds_match_the_reference(steps, flops_per_step, gflops,
                                            down, up):
  broadcast, upload = 797_640, 797_644
  got = clock.client_seconds(
      steps, clock.seconds_per_step(flops_per_step, gflops),
      clock.communication_seconds(broadcast, upload, down, up))
  assert float(got) == pytest.approx(_reference_seconds(
      steps, flops_per_step, gflops, broadcast, upload, down, up), rel=1e-12)


def test_a_hand_computed_client():
  # 100 steps of 1 GFLOP at 2 GFLOP/s: 50 s; 1 MB down at 8 Mbit/s: 1 s;
  # 0.5 MB up at 2 Mbit/s: 2 s.
  seconds = clock.client_seconds(
      100, clock.seconds_per_step(1e9, 2.0),
      clock.communication_seconds(1e6, 5e5, 8.0, 2.0))
  assert float(seconds) == pytest.approx(53.0)


def test_arrays_of_clients_broadcast():
  steps = np.array([10, 20, 30])
  step_seconds = clock.seconds_per_step(np.array([1e9, 1e9, 2e9]),
                                        np.array([1.0, 2.0, 4.0]))
  comm = clock.communication_seconds(1e6, 1e6, np.array([8.0, 8.0, 16.0]),
                                     np.array([8.0, 4.0, 8.0]))
  np.testing.assert_allclose(
      clock.client_seconds(steps, step_seconds, comm),
      [10 + 1 + 1, 10 + 1 + 2, 15 + 0.5 + 1])
