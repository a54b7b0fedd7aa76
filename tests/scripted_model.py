"""A real ``GPTModel`` whose greedy continuation of a prompt is a given text: for tests that
need the model to say something exact (a made-up next turn, a stop string, an end-of-text)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.tokenizer import EOT_ID


def scripted_model(prompt_ids: Sequence[int], continuation_ids: Sequence[int]) -> GPTModel:
    """Greedy decoding after ``prompt_ids`` yields ``continuation_ids`` (then token 0 unless the
    script ends with ``<|endoftext|>``).

    Every block writes nothing into the residual stream and the token embeddings are zero, so
    the hidden state at position t is the position embedding, a one-hot of dimension t; the
    head maps dimension t to the token wanted after position t. Positions count from each
    row's first real token, so left-padded batches see the same script.
    """
    length = len(prompt_ids) + len(continuation_ids)
    width = length + 64  # room to generate past the script
    cfg = GPTConfig(vocab_size=50257, context_length=width, emb_dim=width, n_layers=1, n_heads=1,
                    drop_rate=0.0, qkv_bias=True, tie_weights=False)
    model = GPTModel(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.final_norm.weight.fill_(1.0)
        model.pos_emb.weight.copy_(10.0 * torch.eye(width))
        for offset, token in enumerate(continuation_ids):
            model.out_head.weight[token, len(prompt_ids) - 1 + offset] += 1.0
    return model.eval()


def scripted_answer(prompt_ids: Sequence[int], continuation_ids: Sequence[int]) -> GPTModel:
    """``scripted_model`` that stops with ``<|endoftext|>`` after the script."""
    return scripted_model(prompt_ids, [*continuation_ids, EOT_ID])
