"""Which width of the model each client trains (HeteroFL).

HeteroFL (Diao, Ding and Tarokh, "HeteroFL: Computation and Communication
Efficient Federated Learning for Heterogeneous Clients", ICLR 2021, arXiv
2010.01264) gives a client of low capability a width-w sub-model: the first
ceil(w * units) units of every hidden layer (`models/width.py`). The
policy (`--model_width_policy`) picks, for each sampled client, one width of
`--model_widths` (widest first):

  * `full` (the default): every client trains the whole model; nothing
    here runs, and training is exactly what it was without widths.
  * `capacity`: the widest width whose full local work (E epochs at the
    sub-model's FLOPs, plus sending and receiving the sub-model) fits the
    round's deadline on the client's device; the narrowest if none fits (the
    round policy then shortens its work or drops it). The deadline is the
    one the round policy would use for the full model (`--deadline_seconds`,
    or the `--deadline_quantile` of the sampled clients' full-model times).
    This is the paper's "computation complexity" level assigned from the
    device, in simulated time.
  * `mix`: a fixed share of clients per width, as the paper's a-e mixes
    (`--model_width_mix`: client counts per width). Clients get widths by a
    permutation drawn from --seed, once for the run.

Each width's costs (`WidthCosts`) come from the sub-model itself: its
training FLOPs per example (`models/flops.py` on `builder(seed, width=w)`)
and its size (`width.parameter_count`): a client receives and uploads only
its sub-model, 4 bytes a value. The coordinate mask it also uploads in the
simulation is not counted: the server assigned the width and knows it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from tff_pipeline import aggregators
from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import registry
from tff_pipeline import tasks as tasks_lib
from tff_pipeline.aggregators import communication
from tff_pipeline.models import width as width_lib

# Separates the mix's permutation from the other streams derived from --seed.
_MIX_STREAM = 0x5749_4454


@dataclasses.dataclass(frozen=True)
class WidthCosts:
  """What one client's round costs at each width (widest first).

  Attributes:
    widths: The widths, as `--model_widths` lists them.
    parameters: Trainable values of each width's sub-model.
    flops_per_example: Training FLOPs per example of each sub-model.
    broadcast_bytes: Bytes a client of that width receives.
    upload_bytes: Bytes it uploads (its sub-model's update and weight).
  """

  widths: tuple[float, ...]
  parameters: np.ndarray
  flops_per_example: np.ndarray
  broadcast_bytes: np.ndarray
  upload_bytes: np.ndarray

  def facts(self) -> dict[str, dict[str, float]]:
    """Per width, for summary.json: {'0.5': {'parameters': ...}, ...}."""
    return {
        label(w): {
            'parameters': int(self.parameters[j]),
            'train_flops_per_example': float(self.flops_per_example[j]),
            'bytes_broadcast_per_client': int(self.broadcast_bytes[j]),
            'bytes_uploaded_per_client': int(self.upload_bytes[j]),
        } for j, w in enumerate(self.widths)
    }


def task_width_spec(task: tasks_lib.Task,
                    config: config_lib.TrainingConfig) -> width_lib.WidthSpec:
  """The `width.WidthSpec` of the task's model, if it can be narrowed.

  Raises:
    errors.UsageError: if the task has no width-scaled models, or its model
      has no hidden layer (or one `models/width.py` cannot cut).
  """
  policy = f'--model_width_policy={config.model_width.model_width_policy}'
  if task.model_builder_at_width is None:
    raise errors.UsageError(f'{policy} needs a model with hidden layers; the '
                            f'{task.name} task has no width-scaled models')
  try:
    spec = width_lib.spec_of(task.model_builder())
  except ValueError as e:
    raise errors.UsageError(f'{policy}: {e}') from None
  if not any(cut.cut_out for cut in spec.weights):
    raise errors.UsageError(f'{policy} needs a model with hidden layers; the '
                            f'{task.name} task\'s model has none to narrow')
  return spec


def label(width: float) -> str:
  """A width as the metric names and summary.json write it, e.g. '0.0625'."""
  return f'{width:g}'


def width_costs(
    widths: tuple[float, ...],
    parameters: list[list[int]],
    non_trainable: list[int],
    flops_per_example: list[float],
    config: config_lib.TrainingConfig,
) -> WidthCosts:
  """The costs of each width.

  Args:
    widths: The widths, widest first.
    parameters: For each width, its sub-model's trainable tensor sizes.
    non_trainable: The model's non-trainable tensor sizes (sent whole).
    flops_per_example: For each width, its sub-model's training FLOPs per
      example.
    config: The run's configuration (what the upload holds).
  """
  payloads = [communication.payload(
      sizes, non_trainable, config, aggregators.COMPRESSION_THRESHOLD)
              for sizes in parameters]
  return WidthCosts(
      widths=tuple(widths),
      parameters=np.array([sum(sizes) for sizes in parameters], np.int64),
      flops_per_example=np.asarray(flops_per_example, np.float64),
      broadcast_bytes=np.array([p.broadcast_bytes for p in payloads],
                               np.int64),
      upload_bytes=np.array([p.upload_bytes for p in payloads], np.int64))


@dataclasses.dataclass(frozen=True)
class WidthRequest:
  """What a policy knows of a round's candidates (sampling order).

  Attributes:
    client_indices: The candidates' client indices.
    full_steps: Local steps of E full epochs, per candidate.
    step_seconds: [candidates, widths] seconds per local step at each width.
    comm_seconds: [candidates, widths] seconds to receive and send each
      width's sub-model.
    deadline_seconds: The round's deadline for the full model, or None.
    fixed: The run's fixed width index of every client (the `mix`), or None.
  """

  client_indices: np.ndarray
  full_steps: np.ndarray
  step_seconds: np.ndarray
  comm_seconds: np.ndarray
  deadline_seconds: float | None
  fixed: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class WidthPolicy:
  """A registered policy.

  Attributes:
    assign: request -> the index (into the widths) of each candidate's
      width; None for `full`, which trains the whole model.
    uses_deadline: Whether it needs the round's deadline.
  """

  assign: Callable[[WidthRequest], np.ndarray] | None
  uses_deadline: bool = False


WIDTH_POLICIES: registry.Registry[WidthPolicy] = registry.Registry(
    'model width policy', '--model_width_policy')


def _capacity(request: WidthRequest) -> np.ndarray:
  seconds = (request.full_steps[:, np.newaxis] * request.step_seconds
             + request.comm_seconds)
  fits = seconds <= request.deadline_seconds
  narrowest = seconds.shape[1] - 1
  # argmax finds the first (widest) width that fits.
  return np.where(fits.any(axis=1), np.argmax(fits, axis=1),
                  narrowest).astype(np.int64)


def _mix(request: WidthRequest) -> np.ndarray:
  return request.fixed[request.client_indices]


WIDTH_POLICIES.register(
    'full', 'every client trains the whole model (no sub-models)')(
        WidthPolicy(None))
WIDTH_POLICIES.register(
    'capacity', 'each client trains the widest of --model_widths whose full '
    'local work fits the round\'s deadline on its device')(
        WidthPolicy(_capacity, uses_deadline=True))
WIDTH_POLICIES.register(
    'mix', 'a fixed number of clients per width (--model_width_mix), '
    'assigned from --seed')(WidthPolicy(_mix))


def mix_assignment(seed: int, counts: tuple[int, ...],
                   num_clients: int) -> np.ndarray:
  """The width index of every client for `--model_width_mix=counts`.

  Clients in a permutation drawn from (seed, stream) take the first width
  `counts[0]` at a time, then the next, so the mix does not follow the
  partition's client order.
  """
  if sum(counts) != num_clients:
    raise ValueError(f'counts {counts} do not sum to {num_clients}')
  order = np.random.default_rng([seed, _MIX_STREAM]).permutation(num_clients)
  assignment = np.empty(num_clients, np.int64)
  assignment[order] = np.repeat(np.arange(len(counts)), counts)
  return assignment


def round_stats(costs: WidthCosts, width_indices: np.ndarray,
                kept: np.ndarray) -> dict[str, float]:
  """The round's `width/` columns: mean width and clients per width.

  Args:
    costs: The run's widths.
    width_indices: Each candidate's width index.
    kept: Which candidates trained.
  """
  trained = width_indices[kept]
  widths = np.asarray(costs.widths)
  row: dict[str, Any] = {
      'width/mean_width': float(widths[trained].mean()) if trained.size
                          else 0.0,
  }
  counts = np.bincount(trained, minlength=len(widths))
  for w, count in zip(costs.widths, counts):
    row[f'width/clients_at_{label(w)}'] = float(count)
  return row
