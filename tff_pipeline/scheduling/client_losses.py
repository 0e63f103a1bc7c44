"""The global model's loss on clients' training data, evaluated by the server.

Loss-aware selection and feedback need L_k, the loss of the current global
model on client k's data. In a deployment the clients measure it and report
it (power of choice, Cho et al. 2022, Algorithm 1; the pre-training loss of
`algorithms/compensation_client_work.py`). In this simulation the server
evaluates it directly on each client's training data, which stands in for
that report: the same number (the mean per-example loss), without a round
trip through TFF. It costs a forward pass over the clients' data, which the
loop times and reports as `selection/evaluation_seconds`, apart from the
round's other costs. With `max_examples` > 0 a client's loss is estimated on
at most that many of its examples, drawn without replacement from (seed,
round, client): an unbiased estimate at a bounded cost, as the
computation-efficient variant of power of choice (cpow-d, Cho et al. 2022)
estimates it from a few mini-batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tff_pipeline import tasks as tasks_lib

_CHUNK = 4000
# Separates the loss-sample stream from the others derived from --seed.
_SAMPLE_STREAM = 0x4C4F_5353


class ClientLosses:
  """L_k of one global model, evaluated on demand and kept.

  Call it with client indices (into `task.train_data.client_ids`); each
  client is evaluated once per instance. A client without examples has loss
  NaN (unknown).

  Args:
    task: The task (its model, loss and clients' data).
    weights: The global model's trainable weights (Keras order).
    max_examples: Evaluate at most this many examples per client (0: all).
    seed: The run's seed (for the sample).
    round_num: The round (for the sample).
    model: Returns the Keras model to evaluate with (its weights are set
      here); defaults to a new model from `task.model_builder`.
  """

  def __init__(self, task: tasks_lib.Task, weights: Sequence[np.ndarray],
               *, max_examples: int = 0, seed: int = 0, round_num: int = 0,
               model: Callable[[], tf.keras.Model] | None = None):
    self._model_source = model or task.model_builder
    self._max_examples = max_examples
    self._seed = seed
    self._round_num = round_num
    self._task = task
    self._weights = [np.asarray(w) for w in weights]
    self._client_ids = task.train_data.client_ids
    self._known: dict[int, float] = {}
    self._model: tf.keras.Model | None = None

  def __call__(self, client_indices: Sequence[int] | np.ndarray) -> np.ndarray:
    indices = [int(i) for i in np.asarray(client_indices).reshape(-1)]
    missing = sorted({i for i in indices if i not in self._known})
    if missing:
      self._known.update(zip(missing, self._evaluate(missing)))
    return np.array([self._known[i] for i in indices], np.float64)

  @property
  def known(self) -> dict[int, float]:
    """Every loss evaluated so far, by client index."""
    return dict(self._known)

  def _evaluate(self, indices: list[int]) -> list[float]:
    if self._model is None:
      self._model = self._model_source()
      self._model.set_weights(self._weights)
    data = self._task.train_data
    arrays = [self._sample(i, data.client_arrays(self._client_ids[i]))
              for i in indices]
    sizes = np.array([len(a['y']) for a in arrays])
    if not sizes.sum():
      return [float('nan')] * len(indices)
    x = np.concatenate([a['x'] for a in arrays])
    y = np.concatenate([a['y'] for a in arrays])
    loss = self._task.loss_builder()
    per_example = np.concatenate([
        np.asarray(loss.call(tf.constant(y[i:i + _CHUNK]),
                             self._model(x[i:i + _CHUNK], training=False)),
                   np.float64).reshape(-1)
        for i in range(0, len(x), _CHUNK)
    ])
    owner = np.repeat(np.arange(len(indices)), sizes)
    sums = np.bincount(owner, weights=per_example, minlength=len(indices))
    with np.errstate(invalid='ignore', divide='ignore'):
      means = np.where(sizes > 0, sums / np.maximum(sizes, 1), np.nan)
    return [float(v) for v in means]

  def _sample(self, index: int, arrays):
    size = len(arrays['y'])
    if not 0 < self._max_examples < size:
      return arrays
    rng = np.random.default_rng(
        [self._seed, _SAMPLE_STREAM, self._round_num, index])
    rows = np.sort(rng.choice(size, self._max_examples, replace=False))
    return {name: array[rows] for name, array in arrays.items()}


def evaluator(task: tasks_lib.Task, *, max_examples: int = 0, seed: int = 0
              ) -> Callable[[Sequence[np.ndarray], int], ClientLosses]:
  """(weights, round) -> `ClientLosses` of that global model, for the loop.

  The rounds share one Keras model, built on first use (after the learning
  process is built: TFF builds its own copies of the model in graph contexts,
  and Keras refuses to run models built earlier outside them); building it
  anew each round cost more than the evaluation itself on the 2NN.
  """
  cache: list[tf.keras.Model] = []

  def model() -> tf.keras.Model:
    if not cache:
      cache.append(task.model_builder())
    return cache[0]

  return lambda weights, round_num: ClientLosses(
      task, weights, max_examples=max_examples, seed=seed,
      round_num=round_num, model=model)
