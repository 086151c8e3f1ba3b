"""Per-datapoint random numbers of AIS chains: initial noise, HMC momenta, accept/reject uniforms."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..noise import _PURPOSE_AIS_INITIAL, _PURPOSE_AIS_TUNE_ACCEPT, _PURPOSE_AIS_TUNE_MOMENTUM, _STREAMS

STEP_BLOCK = 64
"""Transitions whose momenta and uniforms are drawn together from one stream position."""


class ChainNoise:
    """Per-datapoint random numbers of one call: initial noise, momenta, log-uniforms.

    Slot ``s`` of the call belongs to dataset index ``slot_indices[s]`` (None: an unused slot,
    which gets zeros). Transition ``j``'s numbers are row ``j % STEP_BLOCK`` of block
    ``j // STEP_BLOCK`` of the datapoint's streams, drawn whole whatever the batching.
    """

    def __init__(self, seed: int, slot_indices: Sequence[Optional[int]], rows: int, event: tuple[int, ...],
                 purposes: tuple[int, int], dtype: torch.dtype, device: torch.device) -> None:
        self.seed, self.slot_indices, self.rows, self.event = seed, list(slot_indices), rows, event
        self.purposes, self.dtype, self.device = purposes, dtype, device
        self._block, self._momenta, self._log_u = -1, None, None

    def initial(self) -> Tensor:
        out = np.zeros((len(self.slot_indices), self.rows, *self.event))
        for slot, index in enumerate(self.slot_indices):
            if index is not None:
                _STREAMS.noise(self.seed, index, purpose=_PURPOSE_AIS_INITIAL).standard_normal(out=out[slot])
        return torch.from_numpy(out).to(device=self.device, dtype=self.dtype)

    def trials(self, n_trials: int, rows: slice) -> tuple[Tensor, Tensor]:
        """Return momenta ``[n_trials, S, r, *event]`` and ``log u`` ``[n_trials, S, r]`` of the step-size trials of ``rows``.

        Drawn for all ``self.rows`` rows of a slot (so a row's numbers do not depend on which
        rows are asked for) from the datapoint's own tuning streams.
        """
        n_slots = len(self.slot_indices)
        momenta = np.zeros((n_slots, n_trials, self.rows, *self.event))
        uniforms = np.ones((n_slots, n_trials, self.rows))
        for slot, index in enumerate(self.slot_indices):
            if index is not None:
                _STREAMS.noise(self.seed, index, purpose=_PURPOSE_AIS_TUNE_MOMENTUM).standard_normal(out=momenta[slot])
                _STREAMS.noise(self.seed, index, purpose=_PURPOSE_AIS_TUNE_ACCEPT).random(out=uniforms[slot])
        momenta = torch.from_numpy(momenta[:, :, rows]).movedim(1, 0).to(device=self.device, dtype=self.dtype)
        log_u = torch.from_numpy(uniforms[:, :, rows]).movedim(1, 0).to(self.device).log_()
        return momenta, log_u

    def transition(self, j: int) -> tuple[Tensor, Tensor]:
        """Return momenta ``[S, rows, *event]`` (compute dtype) and ``log u`` ``[S, rows]`` (float64) of transition ``j``."""
        block = j // STEP_BLOCK
        if block != self._block:
            n_slots = len(self.slot_indices)
            momenta = np.zeros((n_slots, STEP_BLOCK, self.rows, *self.event))
            uniforms = np.ones((n_slots, STEP_BLOCK, self.rows))
            for slot, index in enumerate(self.slot_indices):
                if index is not None:
                    _STREAMS.noise(self.seed, index, purpose=self.purposes[0], block=block).standard_normal(out=momenta[slot])
                    _STREAMS.noise(self.seed, index, purpose=self.purposes[1], block=block).random(out=uniforms[slot])
            self._momenta = torch.from_numpy(momenta).to(device=self.device, dtype=self.dtype)
            self._log_u = torch.from_numpy(uniforms).to(self.device).log_()
            self._block = block
        return self._momenta[:, j % STEP_BLOCK], self._log_u[:, j % STEP_BLOCK]


__all__ = ["STEP_BLOCK", "ChainNoise"]
