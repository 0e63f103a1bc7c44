"""NumPy references of the lessons: full-batch GD on linear regression.

A full-batch gradient step on client i's mean squared error is the affine
map w -> (I - eta A_i) w + eta b_i, A_i = 2 X_i^T X_i / n_i,
b_i = 2 X_i^T y_i / n_i (X_i with a column of ones for the bias), so tau
local steps are an affine map w -> B_i w + c_i too, and a round of FedAvg
(McMahan et al. 2017, arXiv 1602.05629) or FedNova (Wang et al. 2020,
arXiv 2007.07481) is a weighted combination of those maps. Everything here
is float64 NumPy, independent of TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AffineMap = tuple[np.ndarray, np.ndarray]
"""(B, c): the map w -> B w + c on flattened linear weights [w_1..w_d, b]."""


def design_matrix(x: np.ndarray) -> np.ndarray:
  """[x, 1] in float64: the features with a column of ones for the bias."""
  x = np.asarray(x, np.float64)
  return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def mse_gradient(x: np.ndarray, y: np.ndarray,
                 theta: np.ndarray) -> np.ndarray:
  """Gradient of mean((X theta - y)^2), the Keras MSE, at theta."""
  design = design_matrix(x)
  target = np.asarray(y, np.float64).reshape(-1)
  return 2.0 / len(design) * design.T @ (design @ theta - target)


def mse(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> float:
  """mean((X theta - y)^2) in float64."""
  residual = design_matrix(x) @ theta - np.asarray(y, np.float64).reshape(-1)
  return float(np.mean(residual**2))


def local_gd_map(x: np.ndarray, y: np.ndarray, learning_rate: float,
                 steps: int) -> AffineMap:
  """`steps` full-batch GD steps on one client's MSE, as an affine map.

  One step is w -> (I - eta A) w + eta b with A = 2 X^T X / n and
  b = 2 X^T y / n; composing `steps` of them gives (B, c).
  """
  design = design_matrix(x)
  target = np.asarray(y, np.float64).reshape(-1)
  n, dim = design.shape
  step = np.eye(dim) - learning_rate * 2.0 / n * design.T @ design
  shift = learning_rate * 2.0 / n * design.T @ target
  b_mat, c_vec = np.eye(dim), np.zeros(dim)
  for _ in range(steps):
    b_mat, c_vec = step @ b_mat, step @ c_vec + shift
  return b_mat, c_vec


def fedavg_iterates(maps: Sequence[AffineMap], weights: Sequence[float],
                    rounds: int, theta0: np.ndarray) -> list[np.ndarray]:
  """Full-participation FedAvg (server SGD, learning rate 1) in NumPy.

  w_{t+1} = sum_i p_i (B_i w_t + c_i), p_i = weights_i / sum(weights).
  Returns w_1 .. w_rounds.
  """
  p = np.asarray(weights, np.float64) / np.sum(weights)
  theta, iterates = np.asarray(theta0, np.float64), []
  for _ in range(rounds):
    theta = sum(pi * (b @ theta + c) for pi, (b, c) in zip(p, maps))
    iterates.append(theta)
  return iterates


def fednova_iterates(maps: Sequence[AffineMap], weights: Sequence[float],
                     local_steps: Sequence[int], rounds: int,
                     theta0: np.ndarray) -> list[np.ndarray]:
  """Full-participation FedNova (Wang et al. 2020, eq. 6) in NumPy.

  w_{t+1} = w_t + tau_eff sum_i p_i (B_i w_t + c_i - w_t) / tau_i with
  tau_eff = sum_i p_i tau_i: what the `compensated` aggregator computes
  (`aggregators.compensation.compensated_average`) with q = 0.
  """
  p = np.asarray(weights, np.float64) / np.sum(weights)
  tau = np.asarray(local_steps, np.float64)
  tau_eff = float(p @ tau)
  theta, iterates = np.asarray(theta0, np.float64), []
  for _ in range(rounds):
    theta = theta + tau_eff * sum(
        pi * (b @ theta + c - theta) / ti
        for pi, ti, (b, c) in zip(p, tau, maps))
    iterates.append(theta)
  return iterates


def fedavg_fixed_point(maps: Sequence[AffineMap],
                       weights: Sequence[float]) -> np.ndarray:
  """Where FedAvg converges: w = sum_i p_i (B_i w + c_i), solved exactly."""
  p = np.asarray(weights, np.float64) / np.sum(weights)
  b_bar = sum(pi * b for pi, (b, _) in zip(p, maps))
  c_bar = sum(pi * c for pi, (_, c) in zip(p, maps))
  return np.linalg.solve(np.eye(len(c_bar)) - b_bar, c_bar)


def fednova_fixed_point(maps: Sequence[AffineMap], weights: Sequence[float],
                        local_steps: Sequence[int]) -> np.ndarray:
  """Where FedNova converges: sum_i p_i (B_i w + c_i - w) / tau_i = 0."""
  p = np.asarray(weights, np.float64) / np.sum(weights)
  tau = np.asarray(local_steps, np.float64)
  lhs = sum(pi / ti * (np.eye(len(c)) - b)
            for pi, ti, (b, c) in zip(p, tau, maps))
  rhs = sum(pi / ti * c for pi, ti, (_, c) in zip(p, tau, maps))
  return np.linalg.solve(lhs, rhs)


def weighted_client_optimum(
    clients: Sequence[tuple[np.ndarray, np.ndarray]],
    client_weights: Sequence[float]) -> np.ndarray:
  """argmin_w sum_i q_i F_i(w), F_i the mean squared error of client i.

  Least squares in which each of client i's n_i examples has weight
  q_i / n_i.

  Args:
    clients: [(x_i, y_i)] per client.
    client_weights: q_i per client, >= 0, not all zero.

  Returns:
    [w_1..w_d, b] in float64.
  """
  xs = np.concatenate([x for x, _ in clients])
  ys = np.concatenate([np.reshape(y, -1) for _, y in clients])
  example_weights = np.concatenate([
      np.full(len(x), q / len(x)) for q, (x, _) in zip(client_weights,
                                                       clients)])
  root = np.sqrt(example_weights)
  solution, *_ = np.linalg.lstsq(design_matrix(xs) * root[:, None],
                                 np.asarray(ys, np.float64) * root,
                                 rcond=None)
  return solution
