"""A peer for the benchmarks: GPT-2 the way nanoGPT's ``model.py`` builds it, written for
this repository: one fused qkv ``nn.Linear``, ``F.scaled_dot_product_attention(is_causal=True)``,
exact GELU, the LM head over every position, one ``F.cross_entropy`` over all the logits.
Parameter names follow nanoGPT (``transformer.h.0.attn.c_attn`` ...), so the weights of a
``GPTModel`` load with a rename."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.model.gpt import GPTConfig


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_heads
        self.c_attn = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim)
        self.c_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = (t.view(batch, seq, self.n_head, -1).transpose(1, 2) for t in self.c_attn(x).split(width, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(batch, seq, width))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.emb_dim)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.emb_dim)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
                                      c_proj=nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.emb_dim), wpe=nn.Embedding(cfg.context_length, cfg.emb_dim),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)), ln_f=nn.LayerNorm(cfg.emb_dim)))
        self.lm_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of ``targets`` (-100: not scored)."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)


RENAMES = (("tok_emb.", "transformer.wte."), ("pos_emb.", "transformer.wpe."), ("final_norm.", "transformer.ln_f."),
           ("out_head.", "lm_head."), ("blocks.", "transformer.h."), (".norm1.", ".ln_1."), (".norm2.", ".ln_2."),
           (".att.qkv.", ".attn.c_attn."), (".att.out_proj.", ".attn.c_proj."), (".ff.fc.", ".mlp.c_fc."),
           (".ff.proj.", ".mlp.c_proj."))


def nanogpt_from(model) -> NanoGPT:
    """A ``NanoGPT`` holding the weights of the ``GPTModel`` ``model``."""
    peer = NanoGPT(model.cfg)
    state = {}
    for name, tensor in model.state_dict().items():
        for old, new in RENAMES:
            name = name.replace(old, new)
        state[name] = tensor
    peer.load_state_dict(state)
    return peer
