"""Remembered results of pure functions, so that one renewal among 10,000
lineages does not recompute what the other 9,999 derive from unchanged inputs.

A `SlotMemo` keeps one result per slot (a lineage, say) together with the
complete inputs it was computed from, and returns it only while the inputs
given are equal to those: a changed chain, `tlsa` or `hostnames` of one
lineage recomputes that lineage alone. The inputs must be everything the
computation reads (immutable values compared with ==), never a proxy such as
a fingerprint or the lineage's name: a result reused for different inputs
would publish or serve the wrong thing. The memory is one entry per slot
ever used, as the state itself.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)
V = TypeVar("V")
In = TypeVar("In")


class SlotMemo(Generic[S, V]):
    """slot -> (inputs, result): the result is reused while the inputs are equal."""

    def __init__(self) -> None:
        self._slots: dict[S, tuple[object, V]] = {}

    def get(self, slot: S, inputs: In, build: Callable[[In], V]) -> V:
        """The result for `inputs`: remembered, or `build(inputs)`."""
        found = self._slots.get(slot)
        if found is not None and found[0] == inputs:
            return found[1]
        value = build(inputs)
        self._slots[slot] = (inputs, value)
        return value

    def clear(self) -> None:
        self._slots.clear()

    def __len__(self) -> int:
        return len(self._slots)
