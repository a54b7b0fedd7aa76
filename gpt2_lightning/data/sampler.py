"""The batch sampler of training and evaluation: shuffled (or length-grouped) batches, sharded
across processes, resumable in the middle of an epoch."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length, in a shuffled order, to cut padding.

    Each epoch shuffles the indices, sorts windows of ``batch_size * group_batches`` of
    them by length, cuts those into batches and shuffles the batches. With
    ``shuffle=False`` it yields plain consecutive batches (for evaluation). ``num_replicas``/``rank`` shard the batches
    across processes: with ``equal_shards`` every rank gets the same number (training), else
    every batch goes to exactly one rank (evaluation: each record counted once).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True,
                 group_by_length: bool = True, group_batches: int = 16, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0, equal_shards: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.group_batches = group_batches
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.equal_shards = equal_shards
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None
        """``(epoch, batches)``: in that epoch, skip the batches an interrupted run did."""
        self.sampler = _IndexView(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        indices = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(indices)
        if self.group_by_length:
            window = self.batch_size * self.group_batches
            indices = [i for start in range(0, len(indices), window)
                       for i in sorted(indices[start:start + window], key=self.lengths.__getitem__)]
        batches = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the order is drawn at the first batch, after Lightning's set_epoch
        # (which it calls after the DataLoader has already asked for the iterator).
        batches = self._all_batches()
        per_rank = len(self)
        if self._wraps(len(batches)):  # pad by wrapping so that every rank steps equally often
            batches = (batches * self.num_replicas)[:per_rank * self.num_replicas]
        mine = batches[self.rank::self.num_replicas][:per_rank]
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            mine = mine[self.resume_at[1]:]
            self.resume_at = None
        yield from mine

    def _wraps(self, batches: int) -> bool:
        """Whether ranks repeat batches to step equally often: in training (where every step is
        a collective), and in evaluation only when there are fewer batches than ranks (a rank
        without a batch would skip the loop and leave the others waiting)."""
        return self.num_replicas > 1 and (self.equal_shards or batches < self.num_replicas)

    def __len__(self) -> int:
        n = len(self.lengths)
        batches = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        if self._wraps(batches):
            return math.ceil(batches / self.num_replicas)
        return len(range(self.rank, batches, self.num_replicas))


class _IndexView(Sampler[int]):
    """The indices of a batch sampler's current epoch, in batch order.

    Lightning sets the epoch through ``batch_sampler.sampler.set_epoch`` (not on the batch
    sampler itself), so this is the handle through which each epoch gets a new order.
    """

    def __init__(self, batches: LengthGroupedBatchSampler):
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self.batches._all_batches() for i in batch)

    def __len__(self) -> int:
        return len(self.batches.lengths)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of input positions that are padding when ``batches`` are padded to their longest."""
    real = padded = 0
    for batch in batches:
        batch_lengths = [lengths[i] - 1 for i in batch]
        real += sum(batch_lengths)
        padded += max(batch_lengths) * len(batch)
    return 1.0 - real / padded if padded else 0.0
