import numpy as np
import pytest
import torch

from gpt2_lightning.data.datamodule import InstructionDataModule
from gpt2_lightning.data.dataset import InstructionCollator, InstructionDataset
from gpt2_lightning.data.prompts import format_example, format_prompt
from gpt2_lightning.data.sampler import LengthGroupedBatchSampler, padding_fraction
from gpt2_lightning.model.tokenizer import EOT_ID, encode
from tests.conftest import REPO_ROOT

E, X = EOT_ID, -100


def example(prompt, response, mask_prompt=False):
    """An example as the dataset holds it: ids closed by end-of-text, and which are scored."""
    return (np.array(prompt + response + [E], dtype=np.uint16),
            np.array([not mask_prompt] * len(prompt) + [True] * (len(response) + 1)))


BATCH = [example([1, 2, 3], [4, 5]), example([6], [7])]
MASKED = [example([1, 2, 3], [4, 5], mask_prompt=True), example([6], [7], mask_prompt=True)]


def test_collator_pads_shifts_and_ignores_padding():
    batch = InstructionCollator()(BATCH)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, E, E, E]]
    assert batch["targets"].tolist() == [[2, 3, 4, 5, E], [7, E, X, X, X]]
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long


def test_collator_masks_the_prompt():
    batch = InstructionCollator()(MASKED)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, E, E, E]]
    assert batch["targets"].tolist() == [[X, X, 4, 5, E], [7, E, X, X, X]]


def test_collator_truncates_to_max_length():
    batch = InstructionCollator(max_length=3)(BATCH)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [6, 7, E]]
    assert batch["targets"].tolist() == [[2, 3, 4], [7, E, X]]
    masked = InstructionCollator(max_length=2)(MASKED)
    assert masked["targets"].tolist() == [[X, X], [7, E]]


def reference_collate(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None):
    """The reference implementation's custom_collate_fn, verbatim in behaviour."""
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst, targets_lst = [], []
    for item in batch:
        new_item = item.copy() + [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs, targets = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        indices = torch.nonzero(targets == pad_token_id).squeeze()
        if indices.numel() > 1:
            targets[indices[1:]] = ignore_index
        if allowed_max_length is not None:
            inputs, targets = inputs[:allowed_max_length], targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst), torch.stack(targets_lst)


@pytest.mark.parametrize("max_length", [None, 40])
def test_collator_equals_the_reference_on_real_records(max_length):
    dm = InstructionDataModule(path=str(REPO_ROOT / "data" / "sample.json"))
    dm.setup()
    dataset = dm.datasets["train"]
    for start in range(0, len(dataset), 8):
        items = [dataset[i] for i in range(start, min(start + 8, len(dataset)))]
        ours = InstructionCollator(max_length=max_length)(items)
        inputs, targets = reference_collate([ids[:-1].tolist() for ids, _ in items], allowed_max_length=max_length)
        assert torch.equal(ours["input_ids"], inputs) and torch.equal(ours["targets"], targets)


def test_dataset_holds_prompt_response_and_end_of_text_and_masks_the_prompt_on_request():
    record = {"instruction": "Name a primary color.", "input": "", "output": "Red."}
    prompt, response = encode(format_prompt(record)), encode("Red.")
    ids, scored = InstructionDataset([record])[0]
    assert ids.tolist() == prompt + response + [E] and scored.all()
    assert prompt + response == encode(format_example(record))
    ids, scored = InstructionDataset([record], mask_prompt=True)[0]
    assert scored.tolist() == [False] * len(prompt) + [True] * (len(response) + 1)
    assert InstructionDataset([record]).lengths == [len(prompt) + len(response) + 1]


def test_length_grouped_sampler_covers_every_index_once_per_epoch_and_is_seeded():
    lengths = [(i * 37) % 90 + 10 for i in range(203)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, group_batches=4, seed=5)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 26
    assert sorted(i for b in epoch0 for i in b) == list(range(203))
    assert list(LengthGroupedBatchSampler(lengths, batch_size=8, group_batches=4, seed=5)) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    plain = LengthGroupedBatchSampler(lengths, batch_size=8, group_by_length=False, seed=5)
    assert padding_fraction(lengths, epoch0) < padding_fraction(lengths, list(plain)) / 2


def test_eval_sampler_is_in_order_and_ranks_split_the_batches():
    assert list(LengthGroupedBatchSampler([5] * 5, 2, shuffle=False, group_by_length=False)) == \
        [[0, 1], [2, 3], [4]]
    ranks = [list(LengthGroupedBatchSampler([5] * 10, 2, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3  # 5 batches padded to 6 by wrapping around
    assert {i for r in ranks for b in r for i in b} == set(range(10))


def test_eval_shards_hold_every_batch_exactly_once():
    def shards(n_records, ranks):
        return [list(LengthGroupedBatchSampler([5] * n_records, 2, shuffle=False, group_by_length=False,
                                               num_replicas=ranks, rank=r, equal_shards=False))
                for r in range(ranks)]

    three = shards(10, 3)  # 5 batches over 3 ranks: 2, 2, 1 and nothing repeated
    assert [len(r) for r in three] == [2, 2, 1]
    assert sorted(i for r in three for b in r for i in b) == list(range(10))
    assert [len(LengthGroupedBatchSampler([5] * 10, 2, shuffle=False, num_replicas=3, rank=r,
                                          equal_shards=False)) for r in range(3)] == [2, 2, 1]
    # Fewer batches than ranks: a rank without a batch would leave the others waiting; it repeats one.
    assert [len(r) for r in shards(3, 3)] == [1, 1, 1]


def test_datamodule_batches_the_sample_data():
    dm = InstructionDataModule(path=str(REPO_ROOT / "data" / "sample.json"), batch_size=4,
                               shuffle_before_split=True, mask_prompt=True)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 51, "val": 3, "test": 6}
    batches = list(dm.train_dataloader())
    assert len(batches) == 13
    assert sum(int((b["targets"] != X).sum()) for b in batches) == \
        sum(int(scored[1:].sum()) for _, scored in dm.datasets["train"])  # response tokens + end-of-text
    assert sum(len(b["input_ids"]) for b in dm.val_dataloader()) == 3


def test_seed_data_padding_with_and_without_length_grouping(seed_dataset):
    dm = InstructionDataModule(path=str(seed_dataset))
    dm.setup()
    lengths = dm.datasets["train"].lengths
    grouped = padding_fraction(lengths, list(LengthGroupedBatchSampler(lengths, 8, seed=1)))
    shuffled = padding_fraction(lengths, list(LengthGroupedBatchSampler(lengths, 8, seed=1,
                                                                        group_by_length=False)))
    print(f"padding per epoch: length-grouped {grouped:.1%}, shuffled {shuffled:.1%}")
    assert grouped < 0.04 and shuffled > 0.12
    by_window = [padding_fraction(lengths, list(LengthGroupedBatchSampler(lengths, 8, group_batches=n, seed=1)))
                 for n in (1, 4, 16, 64)]
    assert by_window[0] == pytest.approx(shuffled, abs=0.02)
    assert by_window == sorted(by_window, reverse=True) and by_window[-1] < 0.01


def test_datamodule_passes_its_grouping_to_the_sampler():
    dm = InstructionDataModule(path=str(REPO_ROOT / "data" / "sample.json"), group_batches=3)
    dm.setup()
    assert dm.train_dataloader().batch_sampler.group_batches == 3
    with pytest.raises(ValueError, match="data.group_batches must be at least 1, got 0"):
        InstructionDataModule(path="x.json", group_batches=0)



def test_only_the_default_location_is_downloaded_to_never_a_path_of_the_users(tmp_path):
    from gpt2_lightning.errors import DataError
    from tests.http_server import FileServer

    body = (REPO_ROOT / "data" / "sample.json").read_bytes()
    with FileServer({"/instruction-data.json": body}) as server:
        url = f"{server.url}/instruction-data.json"
        mistyped = InstructionDataModule(path=str(tmp_path / "my-dta.json"), url=url, download_dir=str(tmp_path))
        mistyped.prepare_data()
        with pytest.raises(DataError, match="my-dta.json: no such file"):
            mistyped.setup()
        assert server.faults.requests == [] and not (tmp_path / "my-dta.json").exists()
        default = InstructionDataModule(url=url, download_dir=str(tmp_path / "cache"))
        default.prepare_data()
        default.setup()
    assert (tmp_path / "cache" / "instruction-data.json").read_bytes() == body
    assert len(server.faults.requests) == 1 and sum(len(d) for d in default.datasets.values()) == 60
