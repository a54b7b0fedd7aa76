"""The keys and values of recent sequences, kept so that a new prompt that begins the same way (a
conversation's next turn resends its whole history) computes only what follows the longest
kept prefix, as llama.cpp's ``cache_prompt`` and vLLM's prefix caching do. Bounded by the
positions it holds; the least recently used sequences go first."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import torch

MIN_REUSED = 16  # positions below which computing them again costs less than looking them up
DEFAULT_MEGABYTES = 256


def positions_in(megabytes: float, n_layers: int, emb_dim: int, dtype: torch.dtype) -> int:
    """How many positions of keys and values of a model of this shape and dtype fit in ``megabytes``."""
    per_position = 2 * n_layers * emb_dim * torch.finfo(dtype).bits // 8
    return int(megabytes * 2**20 // per_position)


class PrefixCache:
    def __init__(self, max_positions: int):
        self.max_positions = max_positions
        self._entries: collections.OrderedDict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = \
            collections.OrderedDict()
        self.positions = 0
        self.hits = 0
        self.reused_positions = 0

    def longest(self, ids: Sequence[int]) -> tuple[int, list[torch.Tensor], list[torch.Tensor]] | None:
        """The longest kept prefix of ``ids`` that leaves at least one token of ``ids`` to compute:
        its length and each layer's keys and values ``[heads, length, head_dim]`` (views: copy
        them); None when no kept sequence shares ``MIN_REUSED`` tokens with ``ids``."""
        best, best_key = 0, None
        wanted = torch.as_tensor(list(ids))
        for key in self._entries:
            n = min(len(key), len(ids) - 1)
            if n < max(MIN_REUSED, best + 1):
                continue
            differs = (torch.as_tensor(key[:n]) != wanted[:n]).nonzero()
            shared = int(differs[0]) if len(differs) else n
            if shared > best:
                best, best_key = shared, key
        if best_key is None or best < MIN_REUSED:
            return None
        self._entries.move_to_end(best_key)
        keys, values = self._entries[best_key]
        self.hits += 1
        self.reused_positions += best
        return best, [k[:, :best] for k in keys], [v[:, :best] for v in values]

    def add(self, ids: Sequence[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep the keys and values ``[heads, len(ids), head_dim]`` of every layer for ``ids``
        (copied); a kept sequence that ``ids`` extends is dropped."""
        key = tuple(ids)
        if len(key) < MIN_REUSED or len(key) > self.max_positions:
            return
        for other in [k for k in self._entries if len(k) <= len(key) and key[:len(k)] == k]:
            self._drop(other)
        self._entries[key] = ([k.clone() for k in keys], [v.clone() for v in values])
        self.positions += len(key)
        while self.positions > self.max_positions:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        del self._entries[key]
        self.positions -= len(key)
