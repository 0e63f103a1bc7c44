"""Device profiles: pure functions of (seed, client); device files checked."""

import json

import numpy as np
import pytest

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import heterogeneity
from tff_pipeline.scheduling import devices


def _config(seed=0, **scheduling):
  return config_lib.TrainingConfig(
      experiment_name='x', root_output_dir='/tmp/x', seed=seed,
      heterogeneity=heterogeneity.ComputeHeterogeneity(
          capacity_profile='minority', min_capacity=0.2,
          slow_client_fraction=0.2),
      scheduling=config_lib.SchedulingConfig(**scheduling))


def test_capacity_profile_scales_speed_by_capacity():
  config = _config(device_gflops=2.0, up_bandwidth_mbps=3.0,
                   down_bandwidth_mbps=9.0)
  got = devices.build_devices(config, 50)
  slow = heterogeneity.minority_clients(50, 0.2, 0)
  expected = np.full(50, 2.0)
  expected[slow] = 0.4
  np.testing.assert_allclose(got.gflops, expected)
  np.testing.assert_array_equal(got.up_mbps, np.full(50, 3.0))
  np.testing.assert_array_equal(got.down_mbps, np.full(50, 9.0))
  assert devices.minority(config, 50) == slow.tolist()


def test_equal_devices_without_a_capacity_profile():
  config = config_lib.TrainingConfig(experiment_name='x',
                                     root_output_dir='/tmp/x')
  got = devices.build_devices(config, 7)
  np.testing.assert_array_equal(got.gflops, np.ones(7))
  assert devices.minority(config, 7) is None


def test_lognormal_profile_is_a_pure_function_of_seed_and_client():
  config = _config(device_profile='lognormal', device_gflops=4.0,
                   device_lognormal_sigma=0.7)
  a = devices.build_devices(config, 30)
  b = devices.build_devices(config, 30)
  np.testing.assert_array_equal(a.gflops, b.gflops)
  # Client k's device does not depend on how many clients there are.
  np.testing.assert_array_equal(devices.build_devices(config, 10).up_mbps,
                                a.up_mbps[:10])
  # NumPy reference: exp(sigma * z), z from the client's own stream.
  z = np.random.default_rng([0, 0x4445_5653, 3]).standard_normal()
  assert a.gflops[3] == pytest.approx(4.0 * np.exp(0.7 * z))
  other = devices.build_devices(_config(seed=1, device_profile='lognormal',
                                        device_gflops=4.0,
                                        device_lognormal_sigma=0.7), 30)
  assert not np.array_equal(other.gflops, a.gflops)
  # Speed and the two bandwidths are independent draws.
  assert len({a.gflops[0] / 4.0, a.up_mbps[0] / 5.0,
              a.down_mbps[0] / 20.0}) == 3


def test_a_csv_device_file_round_trips(tmp_path):
  written = devices.Devices(gflops=np.array([1.5, 0.25, 3.0]),
                            up_mbps=np.array([1.0, 2.0, 3.0]),
                            down_mbps=np.array([10.0, 20.0, 30.0]))
  path = str(tmp_path / 'devices.csv')
  devices.write_device_file(path, written)
  config = _config(device_profile='file', device_file=path)
  got = devices.build_devices(config, 3)
  for name in ('gflops', 'up_mbps', 'down_mbps'):
    np.testing.assert_array_equal(getattr(got, name), getattr(written, name))


def test_a_json_device_file_in_any_row_order(tmp_path):
  path = tmp_path / 'devices.json'
  path.write_text(json.dumps([
      {'client': 1, 'gflops': 2, 'up_mbps': 3, 'down_mbps': 4},
      {'client': 0, 'gflops': 5, 'up_mbps': 6, 'down_mbps': 7}]))
  got = devices.read_device_file(str(path), 2)
  np.testing.assert_array_equal(got.gflops, [5.0, 2.0])
  np.testing.assert_array_equal(got.down_mbps, [7.0, 4.0])


@pytest.mark.parametrize('text,num_clients,message', [
    ('client,gflops,up_mbps\n0,1,1\n', 1, 'missing column.*down_mbps'),
    ('client,gflops,up_mbps,down_mbps\n0,1,1,1\n', 2,
     '1 devices for --num_clients=2'),
    ('client,gflops,up_mbps,down_mbps\n0,0,1,1\n', 1,
     'gflops=.0. must be a positive finite number'),
    ('client,gflops,up_mbps,down_mbps\n0,1,-2,1\n', 1,
     'up_mbps=.-2. must be a positive'),
    ('client,gflops,up_mbps,down_mbps\n0,1,1,nan\n', 1,
     'down_mbps=.nan. must be a positive finite'),
    ('client,gflops,up_mbps,down_mbps\n0,1,1,fast\n', 1, 'not a number'),
    ('client,gflops,up_mbps,down_mbps\n0,1,1,1\n0,1,1,1\n', 2,
     'client 0 is listed twice'),
    ('client,gflops,up_mbps,down_mbps\n5,1,1,1\n', 1, 'must be an index'),
])
def test_bad_device_files_name_the_file(tmp_path, text, num_clients, message):
  path = tmp_path / 'devices.csv'
  path.write_text(text)
  with pytest.raises(errors.DataError, match=message) as e:
    devices.read_device_file(str(path), num_clients)
  assert str(path) in str(e.value) and '\n' not in str(e.value)


def test_bad_json_and_missing_files(tmp_path):
  path = tmp_path / 'devices.json'
  path.write_text('{"client": 0}')
  with pytest.raises(errors.DataError, match='JSON list of objects'):
    devices.read_device_file(str(path), 1)
  path.write_text('[{"client": 0, "gflops": 1, "up_mbps": 1}]')
  with pytest.raises(errors.DataError, match='missing column down_mbps'):
    devices.read_device_file(str(path), 1)
  with pytest.raises(errors.DataError, match='no such file'):
    devices.read_device_file(str(tmp_path / 'none.csv'), 1)


def test_device_file_and_profile_go_together():
  with pytest.raises(errors.UsageError, match='--device_file'):
    _config(device_profile='file')
  with pytest.raises(errors.UsageError, match='--device_file'):
    _config(device_file='devices.csv')
