"""``BatchEngine``: continuous batching gives every sequence what it would get alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gpt2_lightning.generation.engine import BatchEngine, Generation, QueueFull
from gpt2_lightning.generation.sampling import SamplingParams, generate
from gpt2_lightning.model.gpt import GPTConfig, GPTModel

CFG = GPTConfig(vocab_size=50257, context_length=1024, emb_dim=32, n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(CFG).eval()


class Collected:
    """A generation's tokens and its end, for the test to wait on."""

    def __init__(self, prompt, max_new_tokens, generator=None, deadline=None, **sampling):
        self.tokens, self.reason, self.done = [], None, threading.Event()
        self.seq = Generation(prompt, SamplingParams(max_new_tokens, **sampling), on_token=self.tokens.append,
                              on_finish=self._finish, generator=generator, deadline=deadline)

    def _finish(self, reason):
        self.reason = reason
        self.done.set()

    def wait(self):
        assert self.done.wait(60), "the generation never finished"
        return self


def alone(model, prompt, n, **kwargs):
    out = generate(model, torch.tensor([prompt]), n, eos_id=None, **kwargs)
    return out[0, len(prompt):].tolist()


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50257, (n,), generator=g).tolist() for n in lengths]


def test_sequences_joining_a_running_batch_get_their_greedy_answers_alone(model):
    # Short prompts first, then longer ones while they decode (the batch shifts right), in a
    # cache short enough that it also has to shift left to go on.
    batch = prompts([3, 9, 5, 20, 2, 14])
    with BatchEngine(model, max_batch_size=4, max_length=40, eos_id=-1) as engine:
        runs = []
        for i, prompt in enumerate(batch):
            runs.append(Collected(prompt, 18))
            engine.submit(runs[-1].seq)
            time.sleep(0.002 * i)
        for run, prompt in zip(runs, batch):
            assert run.wait().tokens == alone(model, prompt, 18) and run.reason == "length"


def test_each_sequence_samples_with_its_own_settings_and_seed(model):
    batch = prompts([4, 11, 7], seed=1)
    settings = [dict(temperature=0.8, top_k=20), dict(temperature=1.2, top_p=0.9), dict(temperature=0.0)]
    with BatchEngine(model, max_batch_size=3, eos_id=-1) as engine:
        runs = [Collected(p, 12, generator=torch.Generator().manual_seed(i), **s)
                for i, (p, s) in enumerate(zip(batch, settings))]
        for run in runs:
            engine.submit(run.seq)
        for i, (run, prompt, s) in enumerate(zip(runs, batch, settings)):
            expected = alone(model, prompt, 12, generator=torch.Generator().manual_seed(i), **s)
            assert run.wait().tokens == expected


def test_a_cancelled_or_late_sequence_leaves_and_frees_its_row(model):
    with BatchEngine(model, max_batch_size=1, eos_id=-1) as engine:
        endless = Collected(prompts([5])[0], 10_000)
        engine.submit(endless.seq)
        waiting = Collected(prompts([6])[0], 5)
        engine.submit(waiting.seq)
        time.sleep(0.05)
        assert not waiting.done.is_set() and engine.batch_size == 1 and engine.queue_depth == 1
        endless.seq.cancel()
        assert endless.wait().reason == "cancelled" and waiting.wait().reason == "length"
        late = Collected(prompts([5])[0], 10_000, deadline=time.monotonic() + 0.1)
        engine.submit(late.seq)
        assert late.wait().reason == "time_limit" and 0 < len(late.tokens) < 10_000


def test_a_full_queue_refuses_and_a_failing_consumer_ends_alone(model):
    with BatchEngine(model, max_batch_size=2, max_queue=1, eos_id=-1) as engine:
        first = Collected(prompts([5])[0], 10_000)
        engine.submit(first.seq)
        time.sleep(0.05)
        engine.submit(Collected(prompts([5])[0], 3).seq)  # waits: the queue is now full
        with pytest.raises(QueueFull):
            engine.submit(Collected(prompts([5])[0], 3).seq)
        first.seq.cancel()

    def explode(token):
        raise RuntimeError("consumer failed")

    with BatchEngine(model, max_batch_size=2, eos_id=-1) as engine:
        bad = Collected(prompts([5])[0], 8)
        bad.seq.on_token = explode
        good = Collected(prompts([7], seed=3)[0], 8)
        engine.submit(bad.seq)
        engine.submit(good.seq)
        assert bad.wait().reason == "error"
        assert good.wait().tokens == alone(model, prompts([7], seed=3)[0], 8) and good.reason == "length"


def test_a_conversations_next_turns_reuse_its_kept_prefix_and_answer_as_without(model):
    # Five turns, each prompt the whole history: the previous prompt, its answer, a new message.
    messages = prompts([40, 12, 15, 9, 11], seed=3)

    def converse(prefix_cache_mb):
        answers, history, lengths = [], [], []
        with BatchEngine(model, max_batch_size=2, eos_id=-1, prefix_cache_mb=prefix_cache_mb) as engine:
            for message in messages:
                history += message
                lengths.append(len(history))
                run = Collected(list(history), 8)
                engine.submit(run.seq)
                answers.append(run.wait().tokens)
                history += run.tokens
            return answers, engine.prefixes, lengths

    with_reuse, kept, lengths = converse(2)  # 4096 positions of this model
    assert kept.positions > 0
    without, _, _ = converse(0)
    assert with_reuse == without
    assert kept.hits == 4  # every turn after the first
    # each turn reuses the previous prompt and its answer but the last token (never fed back)
    assert kept.reused_positions == sum(length + 8 - 1 for length in lengths[:4])


def test_the_prefix_cache_keeps_at_most_its_positions_and_drops_what_a_longer_sequence_extends():
    from gpt2_lightning.generation.prefix_cache import PrefixCache

    def kv(n):
        return [torch.full((2, n, 4), float(n))], [torch.zeros(2, n, 4)]

    cache = PrefixCache(max_positions=100)
    cache.add(list(range(30)), *kv(30))
    cache.add(list(range(50)), *kv(50))  # extends the first: it replaces it
    assert cache.positions == 50
    cache.add([7] * 60, *kv(60))  # over 100 positions: the least recently used goes
    assert cache.positions == 60 and cache.longest(list(range(40))) is None
    length, keys, _ = cache.longest([7] * 20 + [1])
    assert length == 20 and keys[0].shape == (2, 20, 4)
    assert cache.longest([7] * 10 + [1]) is None  # below MIN_REUSED shared tokens


def test_choices_of_one_prompt_submitted_together_prefill_it_once_and_sample_apart(model):
    [prompt] = prompts([30], seed=4)
    with BatchEngine(model, max_batch_size=4, eos_id=-1) as engine:
        greedy = [Collected(prompt, 6) for _ in range(3)]
        engine.submit_all([run.seq for run in greedy])
        answers = [run.wait().tokens for run in greedy]
        assert engine.prefilled_tokens == len(prompt)
        sampled = [Collected(prompt, 6, generator=torch.Generator().manual_seed(i), temperature=1.0) for i in range(3)]
        engine.submit_all([run.seq for run in sampled])
        assert len({tuple(run.wait().tokens) for run in sampled}) == 3
    assert answers == [alone(model, prompt, 6)] * 3


def test_a_group_that_does_not_fit_in_the_queue_is_refused_whole(model):
    [prompt] = prompts([5], seed=5)
    with BatchEngine(model, max_batch_size=1, max_queue=2, eos_id=-1) as engine:
        first = Collected(prompt, 400)
        engine.submit(first.seq)
        while engine.batch_size == 0:  # the first one decodes; the queue is empty
            time.sleep(0.01)
        engine.submit(Collected(prompt, 2).seq)
        with pytest.raises(QueueFull):
            engine.submit_all([Collected(prompt, 2).seq for _ in range(2)])
        assert engine.queue_depth == 1
        first.seq.cancel()
