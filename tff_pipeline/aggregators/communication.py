"""What a round sends over the network, computed from the model's shapes.

Per sampled client, the server broadcasts the global model (float32) and the
client uploads its update: the model delta (or gradient, for FedSGD), its
weight, and tau_i and L_i when the aggregator consumes the clients' full
reports (`client_reports.ClientWorkNeeds.full_report`). With
`--compression`, every tensor of more than `COMPRESSION_THRESHOLD` values is
sent as `--compression_bits`-bit integers plus two float32 (its range), as
TFF's `EncodedSumFactory.quantize_above_threshold` encodes it; smaller tensors
stay float32. Secure aggregation sends values of the same width (masked
integers) and adds protocol messages that are not counted here: the numbers
are payload only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from tff_pipeline import client_reports
from tff_pipeline import config as config_lib
from tff_pipeline.aggregators import build

FLOAT_BYTES = 4


@dataclasses.dataclass(frozen=True)
class Payload:
  """Bytes per sampled client in one round.

  Attributes:
    broadcast_bytes: Global model sent to the client.
    upload_bytes: Update sent by the client.
    upload_values: Number of values in the update.
  """

  broadcast_bytes: int
  upload_bytes: int
  upload_values: int

  @property
  def upload_bits_per_value(self) -> float:
    return 8.0 * self.upload_bytes / max(self.upload_values, 1)


def payload(
    trainable_sizes: Sequence[int],
    non_trainable_sizes: Sequence[int],
    config: config_lib.TrainingConfig,
    compression_threshold: int,
) -> Payload:
  """The per-client payload of a round of `config` for a model of given sizes.

  Args:
    trainable_sizes: Number of values of each trainable tensor.
    non_trainable_sizes: Number of values of each non-trainable tensor.
    config: The run's configuration (aggregator and compression settings);
      whether tau_i and L_i are sent is what its aggregator declares.
    compression_threshold: Tensors above this size are quantized.
  """
  broadcast = FLOAT_BYTES * (sum(trainable_sizes) + sum(non_trainable_sizes))
  agg = config.aggregation
  upload = 0
  for size in trainable_sizes:
    if agg.compression and size > compression_threshold:
      upload += math.ceil(size * agg.compression_bits / 8) + 2 * FLOAT_BYTES
    else:
      upload += FLOAT_BYTES * size
  scalars = 1  # the client's weight
  if client_reports.needs_of(build.build_aggregator(config)).full_report:
    scalars += 2  # tau_i and L_i
  upload += FLOAT_BYTES * scalars
  return Payload(broadcast, upload, sum(trainable_sizes) + scalars)
