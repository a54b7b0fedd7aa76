"""``score_tokens``: the log-probability of given tokens, as a plain forward pass computes it."""

import random

import pytest
import torch

from gpt2_lightning.evaluate import likelihood
from gpt2_lightning.evaluate.likelihood import score_tokens
from gpt2_lightning.model.gpt import GPTConfig, GPTModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=64, n_layers=2, n_heads=4)).eval()


def sequences(seed=0):
    """Five answers to one 30-token question (sharing it), and two sequences of their own."""
    rng = random.Random(seed)
    question = [rng.randrange(50257) for _ in range(30)]
    shared = [(question + [rng.randrange(50257) for _ in range(rng.randrange(1, 9))], 30) for _ in range(5)]
    return shared + [([rng.randrange(50257) for _ in range(20)], 5), ([rng.randrange(50257) for _ in range(65)], 60)]


def test_scores_are_the_full_forward_passes_log_softmax_at_each_scored_token(model):
    for (ids, start), scores in zip(sequences(), score_tokens(model, sequences(), top=3, batch_size=3)):
        with torch.no_grad():
            logprobs = model(torch.tensor([ids[:-1]])).log_softmax(-1)[0]
        expected = [float(logprobs[i - 1, ids[i]]) for i in range(start, len(ids))]
        assert scores.logprobs == pytest.approx(expected, abs=1e-5)
        assert scores.greedy == [int(logprobs[i - 1].argmax()) == ids[i] for i in range(start, len(ids))]
        best = logprobs[start - 1:].topk(3, dim=-1)
        assert [[t for t, _ in top] for top in scores.top] == best.indices.tolist()


def test_a_shared_prefix_computed_once_gives_the_same_scores(model, monkeypatch):
    shared = score_tokens(model, sequences(1), top=2)
    monkeypatch.setattr(likelihood, "MIN_SHARED_PREFIX", 10**9)  # every sequence alone
    alone = score_tokens(model, sequences(1), top=2)
    for a, b in zip(shared, alone):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5) and a.greedy == b.greedy


def test_a_sequence_beyond_the_context_is_refused_by_name(model):
    with pytest.raises(ValueError, match="1 <= start <= length <= 65; got start 1 of 66 tokens"):
        score_tokens(model, [(list(range(66)), 1)])
