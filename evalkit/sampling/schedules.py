"""Annealing schedules 0 = b_0 < b_1 < ... < b_T = 1 for AIS, as float64 tensors of length T + 1."""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

from ..errors import InputError

SCHEDULES = ("sigmoid", "linear", "geometric")

SIGMOID_SHARPNESS = 4.0
"""d of the sigmoid schedule (Grosse et al. 2015; Wu et al. 2017)."""

GEOMETRIC_START = 1e-4
"""b_1 of the geometric schedule."""


def sigmoid_schedule(steps: int, sharpness: float = SIGMOID_SHARPNESS) -> Tensor:
    """Return ``b_t = (s(d (2t/T - 1)) - s(-d)) / (s(d) - s(-d))``, ``s`` the logistic function.

    Spends steps near both ends, where the distributions change fastest.
    """
    t = torch.arange(steps + 1, dtype=torch.float64)
    s = torch.sigmoid(sharpness * (2 * t / steps - 1))
    low, high = math.exp(-math.log1p(math.exp(sharpness))), 1 / (1 + math.exp(-sharpness))
    betas = (s - low) / (high - low)
    betas[0], betas[-1] = 0.0, 1.0
    return betas


def linear_schedule(steps: int) -> Tensor:
    """Return ``b_t = t / T``."""
    return torch.arange(steps + 1, dtype=torch.float64) / steps


def geometric_schedule(steps: int, start: float = GEOMETRIC_START) -> Tensor:
    """Return ``b_0 = 0`` and ``b_t = start^((T - t) / (T - 1))`` for t >= 1 (b_1 = start, b_T = 1)."""
    betas = torch.zeros(steps + 1, dtype=torch.float64)
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    betas[1:] = torch.exp(math.log(start) * (steps - t) / max(steps - 1, 1))
    return betas


def make_schedule(schedule: Union[str, Sequence[float], Tensor], steps: int) -> Tensor:
    """Return the ``steps + 1`` values b_t of a named schedule, or check given ones.

    Parameters
    ----------
    schedule : {"sigmoid", "linear", "geometric"} or sequence of floats
        Given values must be ``steps + 1`` increasing numbers from 0 to 1.
    steps : int
        T.
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise InputError(f"Expected argument `schedule` to be one of {list(SCHEDULES)} or a sequence, got {schedule!r}.")
        return {"sigmoid": sigmoid_schedule, "linear": linear_schedule, "geometric": geometric_schedule}[schedule](steps)
    betas = torch.as_tensor(schedule, dtype=torch.float64).flatten()
    if len(betas) != steps + 1 or betas[0] != 0 or betas[-1] != 1 or not bool((betas[1:] > betas[:-1]).all()):
        raise InputError(f"Expected a custom `schedule` of steps + 1 = {steps + 1} increasing values from 0 to 1, "
                         f"got {len(betas)} values from {float(betas[0]):g} to {float(betas[-1]):g}.")
    return betas


__all__ = ["SCHEDULES", "geometric_schedule", "linear_schedule", "make_schedule", "sigmoid_schedule"]
