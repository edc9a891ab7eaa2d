"""The slot decoder's key/value cache: transformers' DynamicCache, but appending in place.

transformers' `DynamicLayer.update` concatenates every new token onto the whole cache, so each
decode step copies every key and value held so far: on the 2-core CPU that copy was 30% of a
16-row step at 300 cached tokens (torch profiler: 34 of 114 ms). `GrowingLayer` keeps its tensors in
a buffer with spare columns and writes new tokens into them, reallocating only when the room runs
out; `keys` and `values` are views of the filled part, so the values every layer sees are the
same and the logits are bit for bit those of a DynamicCache. Assigning `keys`/`values` (the slot
decoder does when rows join or leave) replaces the buffer; the next update gives it room again.
`write_rows` (a new row in a finished row's place) and `drop_leading` (columns no row uses any more)
change the buffer in place.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

# Spare columns added when a layer's buffer is full: one reallocation every ROOM decode steps.
ROOM = 64


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with spare columns."""

    def __init__(self, *args, **kwargs):
        self._buffers: dict[str, torch.Tensor | None] = {"keys": None, "values": None}
        self._start = {"keys": 0, "values": 0}  # the first column in use; those before it are dropped
        self._filled = {"keys": 0, "values": 0}  # the column after the last in use
        super().__init__(*args, **kwargs)

    def _view(self, name: str) -> torch.Tensor | None:
        buffer = self._buffers[name]
        return None if buffer is None else buffer[..., self._start[name] : self._filled[name], :]

    def _assign(self, name: str, states: torch.Tensor | None) -> None:
        self._buffers[name] = states
        self._start[name] = 0
        self._filled[name] = 0 if states is None or states.dim() < 2 else states.shape[-2]

    keys = property(lambda self: self._view("keys"), lambda self, states: self._assign("keys", states))
    values = property(lambda self: self._view("values"), lambda self, states: self._assign("values", states))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        for name, states in (("keys", key_states), ("values", value_states)):
            buffer, new = self._buffers[name], states.shape[-2]
            if buffer.dim() < 2 or self._filled[name] + new > buffer.shape[-2]:
                # Full: a new buffer holding the columns in use from its first column, and room.
                held = self._view(name) if self._filled[name] > self._start[name] else None
                width = 0 if held is None else held.shape[-2]
                buffer = self._buffers[name] = _with_room(held, states, width + new + ROOM)
                self._start[name], self._filled[name] = 0, width
            start = self._filled[name]
            buffer[..., start : start + new, :] = states
            self._filled[name] = start + new
        return self.keys, self.values

    def drop_leading(self, columns: int) -> None:
        """Forget every row's first `columns` columns, without a copy (the views start later)."""
        for name in self._start:
            self._start[name] += columns

    def drop_trailing(self, columns: int) -> None:
        """Forget every row's last `columns` columns (the next update writes over them)."""
        for name in self._filled:
            self._filled[name] -= columns

    def write_rows(self, rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put `keys` and `values` ([len(rows), heads, w, dim], w at most this layer's width) into
        batch rows `rows` in place, aligned on the right, and zero those rows' columns before them:
        a finished row's place taken by a new one without copying the rest of the cache."""
        for name, states in (("keys", keys), ("values", values)):
            view = self._view(name)
            start = view.shape[-2] - states.shape[-2]
            view[rows, :, :start] = 0
            view[rows, :, start:] = states


def _with_room(held: torch.Tensor | None, new: torch.Tensor, columns: int) -> torch.Tensor:
    buffer = new.new_empty(*new.shape[:-2], columns, new.shape[-1])
    if held is not None:
        buffer[..., : held.shape[-2], :] = held
    return buffer


class GrowingCache(DynamicCache):
    """A DynamicCache of GrowingLayers (one created per model layer on its first update)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)
