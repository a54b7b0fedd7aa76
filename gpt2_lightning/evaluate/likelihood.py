"""How likely the model finds given text: the log-probability of each token of a sequence after a
given position, whether greedy decoding would have produced it, and the most likely alternatives.
What benchmarks (``evaluate.benchmarks``) and the server's ``echo`` / ``logprobs`` score with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gpt2_lightning.data.dataset import IGNORE_INDEX
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.train.loss import scored_hidden_states

HEAD_ROWS = 1024  # positions whose full-vocabulary log-softmax is computed at once (~200 MB in fp32)
MIN_SHARED_PREFIX = 8  # tokens of a shared prefix worth computing once for its sequences


@dataclass
class TokenScores:
    """The scored tokens of one sequence, in order."""

    logprobs: list[float]
    """The log-probability of each scored token given the tokens before it."""
    greedy: list[bool]
    """Whether each scored token is the most likely one there."""
    top: list[list[tuple[int, float]]]
    """The ``top`` most likely tokens at each scored position, with their log-probabilities
    (empty lists when none were asked for)."""

    @property
    def total(self) -> float:
        return sum(self.logprobs)

    @property
    def all_greedy(self) -> bool:
        return all(self.greedy)


@torch.inference_mode()
def score_tokens(model: GPTModel, sequences: Sequence[tuple[Sequence[int], int]], top: int = 0,
                 batch_size: int = 8) -> list[TokenScores]:
    """For each ``(ids, start)``, the scores of ``ids[start:]``, each token given all before it
    (``start >= 1``; ``len(ids)`` at most one more than the context length: the last token is
    only predicted). Sequences are batched longest
    first, the transformer runs only up to each one's last token and the head only at the
    scored positions; the log-probabilities are computed in float32. Sequences that share all
    their tokens before ``start - 1`` (a multiple-choice question's answers) compute that prefix
    once, its keys and values cached for all of them."""
    context = model.cfg.context_length
    for ids, start in sequences:
        if not 1 <= start <= len(ids) <= context + 1:
            raise ValueError(f"a scored sequence needs 1 <= start <= length <= {context + 1}; "
                             f"got start {start} of {len(ids)} tokens")
    was_training = model.training
    model.eval()
    try:
        scores: list[TokenScores | None] = [None] * len(sequences)
        sharing: dict[tuple[int, ...], list[int]] = {}
        for i, (ids, start) in enumerate(sequences):
            if start - 1 >= MIN_SHARED_PREFIX:
                sharing.setdefault(tuple(ids[:start - 1]), []).append(i)
        alone = set(range(len(sequences)))
        for prefix, members in sharing.items():
            if len(members) < 2:
                continue
            for first in range(0, len(members), batch_size):
                chunk = members[first:first + batch_size]
                tails = [list(sequences[i][0][len(prefix):]) for i in chunk]  # from the last unshared token
                for i, result in zip(chunk, _score_after_prefix(model, list(prefix), tails, top)):
                    scores[i] = result
            alone -= set(members)
        order = sorted(alone, key=lambda i: -len(sequences[i][0]))
        for first in range(0, len(order), batch_size):
            chunk = order[first:first + batch_size]
            for i, result in zip(chunk, _score_batch(model, [sequences[i] for i in chunk], top)):
                scores[i] = result
        return scores
    finally:
        model.train(was_training)


def _score_batch(model: GPTModel, sequences: list[tuple[Sequence[int], int]], top: int) -> list[TokenScores]:
    """Sequences scored side by side, right-padded; the transformer only up to each one's end."""
    device = model.tok_emb.weight.device
    width = max(len(ids) for ids, _ in sequences) - 1
    input_ids = torch.zeros(len(sequences), max(width, 1), dtype=torch.long)
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    for row, (ids, start) in enumerate(sequences):
        input_ids[row, :len(ids) - 1] = torch.as_tensor(ids[:-1])
        targets[row, start - 1:len(ids) - 1] = torch.as_tensor(ids[start:])
    results = [TokenScores([], [], []) for _ in sequences]
    if not (targets != IGNORE_INDEX).any():  # nothing after any start
        return results
    hidden, flat_targets, rows = scored_hidden_states(model, input_ids.to(device), targets.to(device))
    return _head_scores(model, hidden, flat_targets, rows, len(sequences), top)


def _score_after_prefix(model: GPTModel, prefix: list[int], tails: list[list[int]], top: int) -> list[TokenScores]:
    """Each ``prefix + tail`` scored at every token of its tail after the first: the prefix runs
    once into a KV cache that each tail (a row, right-padded) continues from."""
    device = model.tok_emb.weight.device
    width = max(1, max(len(tail) for tail in tails) - 1)
    shared = model.new_cache(1, len(prefix))
    model.hidden_states(torch.tensor([prefix], device=device), shared)
    cache = model.new_cache(len(tails), len(prefix) + width)
    for layer in range(model.cfg.n_layers):
        cache.keys[layer][:, :, :len(prefix)] = shared.keys[layer]
        cache.values[layer][:, :, :len(prefix)] = shared.values[layer]
    cache.length = len(prefix)
    input_ids = torch.zeros(len(tails), width, dtype=torch.long)
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    for row, tail in enumerate(tails):
        input_ids[row, :len(tail) - 1] = torch.as_tensor(tail[:-1])
        targets[row, :len(tail) - 1] = torch.as_tensor(tail[1:])
    hidden = model.hidden_states(input_ids.to(device), cache).flatten(0, 1)
    scored = (targets != IGNORE_INDEX).flatten().nonzero().squeeze(1).to(device)
    return _head_scores(model, hidden[scored], targets.flatten().to(device)[scored], scored // width, len(tails), top)


def _head_scores(model: GPTModel, hidden: torch.Tensor, flat_targets: torch.Tensor, rows: torch.Tensor, n: int,
                 top: int) -> list[TokenScores]:
    """The scores of the targets from their final hidden states ``[N, C]``, each for its row of ``n``."""
    results = [TokenScores([], [], []) for _ in range(n)]
    for at in range(0, len(hidden), HEAD_ROWS):
        logprobs = model.out_head(hidden[at:at + HEAD_ROWS]).float().log_softmax(dim=-1)
        wanted = flat_targets[at:at + HEAD_ROWS]
        chosen = logprobs.gather(1, wanted[:, None]).squeeze(1).tolist()
        greedy = (logprobs.argmax(dim=-1) == wanted).tolist()
        if top:
            values, indices = (t.tolist() for t in logprobs.topk(top, dim=-1))
            best = [list(zip(ids, lps)) for ids, lps in zip(indices, values)]
        else:
            best = [[] for _ in chosen]
        for k, row in enumerate(rows[at:at + HEAD_ROWS].tolist()):
            results[row].logprobs.append(chosen[k])
            results[row].greedy.append(greedy[k])
            results[row].top.append(best[k])
    return results
