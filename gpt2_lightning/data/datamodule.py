"""``InstructionDataModule``: download, validate, format, split and batch instruction data."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import urllib.parse
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from gpt2_lightning.data.dataset import InstructionCollator, InstructionDataset
from gpt2_lightning.data.preference import PreferenceCollator, PreferenceDataset, same_answers
from gpt2_lightning.data.prompts import DEFAULT_STYLE, get_style
from gpt2_lightning.data.records import HUB_PREFIX, FieldNames, load_records, split_records
from gpt2_lightning.data.sampler import LengthGroupedBatchSampler
from gpt2_lightning.errors import ConfigError, DataError
from gpt2_lightning.fetch import download
from gpt2_lightning.io import atomic_write
from gpt2_lightning.resources import cache_dir

log = logging.getLogger(__name__)

TOKENS_VERSION = 1  # the layout of cached token files; bump it when that changes


def _read_tokens(path: Path) -> dict[str, np.ndarray] | None:
    """A token cache file's arrays; None (tokenise again) if it cannot be read."""
    try:
        with np.load(path) as arrays:
            tokens = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    expected = {f"{split}_{k}" for split in ("train", "val", "test") for k in ("ids", "scored", "offsets")}
    return tokens if set(tokens) == expected else None


@dataclass
class InstructionDataModule(L.LightningDataModule):
    """Instruction data (Alpaca records or conversations): download, validate, format,
    split, tokenise (once: cached), batch."""

    path: str | None = None
    """JSON array or JSON Lines file of records or conversations; a CSV or Parquet file, a
    saved Hugging Face dataset folder, or ``hf://NAME`` on the hub (through ``datasets``);
    None: the dataset at ``url``."""
    url: str | None = None
    """With no ``path``: the dataset downloaded once into ``download_dir`` (never to a ``path``
    of the user's: a mistyped name is an error, not a download)."""
    download_dir: str | None = None
    """Where ``url`` is downloaded to (default: ``data/`` of the user cache)."""
    prompt_style: str = DEFAULT_STYLE
    """A name in ``gpt2_lightning.data.prompts.PROMPT_STYLES``."""
    format: str = "auto"
    """``alpaca``, ``messages`` (OpenAI) or ``sharegpt``; ``auto``: told by the first record."""
    hf_split: str = "train"
    """The split of a hub dataset (or saved dataset folder) to read."""
    hf_subset: str | None = None
    """The subset (configuration) of a hub dataset that has several."""
    fields: FieldNames = field(default_factory=FieldNames)
    """Record keys of instruction, input and output."""
    split: tuple[float, float, float] = (0.85, 0.05, 0.10)
    """Fractions of train, val and test records."""
    shuffle_before_split: bool = False
    """Shuffle records (with ``seed``) before splitting; off reproduces the reference split."""
    seed: int = 123
    batch_size: int = 8
    eval_batch_size: int | None = None
    """Batch size of val/test loaders (default: ``batch_size``)."""
    max_length: int | None = None
    """Cut sequences to this many tokens (set to the model's context length when None)."""
    mask_prompt: bool = False
    """Alpaca records: leave prompt tokens out of the loss."""
    train_on: str = "assistant"
    """Conversations: score the answers and their turn ends (``assistant``) or every token (``all``)."""
    token_cache_dir: str | None = None
    """Where tokenised splits are kept, keyed by the file's content and every setting that
    shapes them, so the next run with the same data skips tokenising; None: not kept."""
    drop_last: bool = False
    """Drop the last, smaller training batch of each epoch (as the reference does)."""
    group_by_length: bool = False
    """Batch training examples of similar length together. Off by default: the training loss
    skips padding everywhere but in attention, and batches of alike examples train worse
    (seed data, 2 epochs of gpt2-small from random init: val loss 2.20 with shuffled batches;
    2.23, 2.27, 2.29 with examples sorted 4, 16, 64 batches at a time). On for long sequences,
    whose padding costs attention time."""
    group_batches: int = 16
    """With ``group_by_length``: examples of this many batches are sorted by length together
    (seed data, batch 8: 8.1% padding at 4, 2.7% at 16, 0.7% at 64; 19.4% shuffled)."""
    num_workers: int = 0
    pin_memory: bool = False

    def __post_init__(self) -> None:
        super().__init__()
        if not isinstance(self.fields, FieldNames):
            self.fields = FieldNames(**self.fields)
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {self.batch_size}")
        if self.group_batches < 1:
            raise ConfigError(f"data.group_batches must be at least 1, got {self.group_batches}")
        self.style = get_style(self.prompt_style)
        self.datasets: dict[str, InstructionDataset] = {}
        self._resume_at: tuple[int, int] | None = None

    def data_file(self) -> Path:
        """The records' file: ``path``, else where ``url`` is downloaded to."""
        if self.path is not None:
            return Path(self.path)
        if not self.url:
            raise ConfigError("no data: give data.path a file of records (or data.url a dataset to download)")
        folder = Path(self.download_dir) if self.download_dir else cache_dir() / "data"
        return folder / Path(urllib.parse.urlparse(self.url).path).name

    def prepare_data(self) -> None:
        if self.path is None and not self.data_file().is_file():
            download(self.url, self.data_file())

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        source = self.path if self.path is not None and self.path.startswith(HUB_PREFIX) else self.data_file()
        if isinstance(source, Path) and not source.exists():
            raise DataError(f"{source}: no such file (give data.path an existing file of records)")
        records = self._load(source)
        splits = split_records(records, self.split, self.shuffle_before_split, self.seed)
        cache = self._token_cache(records) if self.token_cache_dir else None
        cached = _read_tokens(cache) if cache is not None and cache.is_file() else None
        self.datasets = {}
        for name, part in zip(("train", "val", "test"), splits):
            tokens = tuple(cached[f"{name}_{k}"] for k in ("ids", "scored", "offsets")) if cached else None
            self.datasets[name] = self._dataset(part, tokens)
        if cache is not None and cached is None:
            buffer = io.BytesIO()
            np.savez(buffer, **{f"{name}_{k}": getattr(d, k) for name, d in self.datasets.items()
                                for k in ("ids", "scored", "offsets")})
            with atomic_write(cache, binary=True) as f:
                f.write(buffer.getvalue())

    def _load(self, source: Path | str) -> list:
        return load_records(source, self.fields, self.format, self.hf_split, self.hf_subset)

    def _dataset(self, records: list, tokens: tuple | None) -> InstructionDataset:
        return InstructionDataset(records, self.style, self.mask_prompt, self.train_on, tokens)

    def _token_cache(self, records: list) -> Path:
        """Where the tokenised splits of these records under these settings are kept."""
        content = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
        settings = json.dumps([content, repr(self.style), self.format, asdict(self.fields),
                               self.mask_prompt, self.train_on, list(self.split), self.shuffle_before_split,
                               self.seed, TOKENS_VERSION, type(self).__name__])
        return Path(self.token_cache_dir) / f"{hashlib.sha256(settings.encode()).hexdigest()[:32]}.npz"

    def state_dict(self) -> dict[str, int]:
        """Where the training data stands (saved in checkpoints): a resumed run continues
        with the next batch of the same epoch instead of restarting the epoch."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        # "processed", not "completed": a checkpoint saved from on_train_batch_end already
        # holds the step of the batch that is not yet counted as completed. Between epochs (a
        # checkpoint saved at the end of training) the count is the finished epoch's, and the
        # epoch to go on with is the next one, from its first batch.
        epochs = trainer.fit_loop.epoch_progress.current
        in_an_epoch = epochs.started > epochs.completed
        return {"epoch": trainer.current_epoch,
                "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed if in_an_epoch else 0}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "epoch" in state_dict:
            self._resume_at = (state_dict["epoch"], state_dict["batches_done"])

    def dataset(self, name: str) -> InstructionDataset:
        """The split ``name`` (``train``, ``val``, ``test``) as its loader serves it."""
        return self.datasets[name]

    def collator(self) -> InstructionCollator:
        return InstructionCollator(self.max_length)

    def _loader(self, name: str, train: bool) -> DataLoader:
        dataset = self.dataset(name)
        trainer = getattr(self, "trainer", None)
        sampler = LengthGroupedBatchSampler(
            dataset.lengths, self.batch_size if train else (self.eval_batch_size or self.batch_size),
            shuffle=train, group_by_length=self.group_by_length and train, group_batches=self.group_batches,
            seed=self.seed,
            drop_last=self.drop_last and train, num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0, equal_shards=train)
        if train:  # Lightning may build this loader more than once (e.g. to count steps)
            sampler.resume_at = self._resume_at
        return DataLoader(dataset, batch_sampler=sampler,
                          collate_fn=self.collator(),
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


@dataclass
class PreferenceDataModule(InstructionDataModule):
    """Preference data (records with a ``chosen`` and a ``rejected`` answer) for DPO, read,
    split and cached as instruction data is; each batch holds both answers of each record
    (``PreferenceCollator``). ``mask_prompt`` and ``train_on`` do not apply: exactly the
    answer and its end-of-text are scored."""

    def _load(self, source: Path | str) -> list:
        records = load_records(source, self.fields, "preference" if self.format == "auto" else self.format,
                               self.hf_split, self.hf_subset)
        if "chosen" not in records[0]:
            raise DataError(f"{source}: holds no preferences (records with '{self.fields.chosen}' and "
                            f"'{self.fields.rejected}' answers); data.format={self.format}")
        if same := same_answers(records):
            shown = ", ".join(map(str, same[:10])) + (", ..." if len(same) > 10 else "")
            log.warning("%s: %d records (%s) have the same chosen and rejected answer; they add nothing to the loss",
                        source, len(same), shown)
        return records

    def _dataset(self, records: list, tokens: tuple | None) -> PreferenceDataset:
        return PreferenceDataset(records, self.style, tokens)

    def dataset(self, name: str) -> PreferenceDataset:
        """The split ``name``, its pairs fitted to ``max_length`` (said once in the log)."""
        dataset = self.datasets[name]
        cut, skipped = dataset.fit(self.max_length)
        if cut or skipped:
            log.info("preference data, %s split: %d prompts cut from the left to fit %d tokens; %d records left out "
                     "(an answer alone longer than that)", name, cut, self.max_length, skipped)
        return dataset

    def collator(self) -> PreferenceCollator:
        return PreferenceCollator(self.max_length)
