"""Hugging Face GPT-2 models with the same shapes as ours: the reference implementation."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2_lightning.model.gpt import GPTConfig


def hf_gpt2(cfg: GPTConfig, seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialised ``GPT2LMHeadModel`` of ``cfg``'s shape, in eval mode."""
    torch.manual_seed(seed)
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length,
                        n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(hf_cfg)
    # Random biases and norms, so a mix-up between them cannot hide behind zeros and ones.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.normal_(mean=0.0 if name.endswith("bias") else 1.0, std=0.05)
    return model.eval()
