"""GPT-2 written out in one file: config, attention, blocks, model and a KV cache.

The module layout and the maths follow OpenAI's GPT-2 (pre-LayerNorm blocks, GELU-tanh,
learned positions, LM head tied to the token embedding), so that the public checkpoints
load with a key-for-key conversion (see ``gpt2_lightning.model.pretrained``). Attention is
``F.scaled_dot_product_attention`` and the MLP's activation GPT-2's tanh GELU; a backend may
substitute faster functions with the same result (``GPTModel.use_kernels``, see
``gpt2_lightning.backends``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.errors import ConfigError

GPT2_PRESETS: dict[str, dict[str, int]] = {
    "gpt2-small": dict(emb_dim=768, n_layers=12, n_heads=12),  # 124M
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16),  # 355M
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20),  # 774M
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25),  # 1558M
}
GPT2_ALIASES = {"gpt2": "gpt2-small", "gpt2-124m": "gpt2-small", "gpt2-355m": "gpt2-medium",
                "gpt2-774m": "gpt2-large", "gpt2-1558m": "gpt2-xl"}


@dataclass
class GPTConfig:
    """Shape and regularisation of a GPT-2 model; the defaults are gpt2-small."""

    vocab_size: int = 50257
    """Number of token ids (50257 for the GPT-2 BPE)."""
    context_length: int = 1024
    """Longest sequence the position embedding covers."""
    emb_dim: int = 768
    """Width of the residual stream."""
    n_layers: int = 12
    """Number of transformer blocks."""
    n_heads: int = 12
    """Attention heads per block; must divide ``emb_dim``."""
    drop_rate: float = 0.0
    """Dropout on embeddings, attention weights and residual branches."""
    qkv_bias: bool = True
    """Bias on the query/key/value projection (GPT-2 has one)."""
    tie_weights: bool = True
    """Share the LM head with the token embedding, as the original GPT-2 does."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads:
            raise ConfigError(
                f"GPTConfig.n_heads={self.n_heads} must divide emb_dim={self.emb_dim} "
                f"(each head gets emb_dim / n_heads channels)"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate!r}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> GPTConfig:
        """The config of a published GPT-2 size (``gpt2-small`` ... ``gpt2-xl``)."""
        preset = GPT2_PRESETS.get(GPT2_ALIASES.get(name.lower(), name.lower()))
        if preset is None:
            raise ConfigError(f"unknown GPT-2 size {name!r}; choose one of {', '.join(GPT2_PRESETS)}")
        return cls.from_dict({**preset, **overrides})

    @classmethod
    def from_spec(cls, name: str, values: Mapping | None = None) -> GPTConfig:
        """A GPT-2 size by name with ``values`` overriding it, or, for any other name
        (such as ``tiny``), a config built from ``values`` alone (as ``conf/model/`` does)."""
        values = dict(values or {})
        if GPT2_ALIASES.get(name.lower(), name.lower()) in GPT2_PRESETS:
            return cls.from_name(name, **values)
        shape = ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads")
        missing = [f for f in shape if f not in values]
        if missing:
            raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(GPT2_PRESETS)}, or give "
                             f"a custom model its full shape (missing {', '.join(missing)})")
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: Mapping) -> GPTConfig:
        """Build from a mapping (a saved config JSON, a Hydra node), rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown GPTConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer for incremental decoding.

    Preallocated to ``max_length`` positions so that decoding a token writes in place
    instead of concatenating; ``length`` is how many positions are filled.
    ``pad_lengths [B]`` marks a left-padded batch: row ``b``'s first ``pad_lengths[b]``
    positions are padding, never attended to, and its positions count from after them.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_length: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 pad_lengths: torch.Tensor | None = None):
        max_length = max_length or cfg.context_length
        if max_length > cfg.context_length:
            raise ValueError(f"KV cache of {max_length} positions exceeds the context length "
                             f"{cfg.context_length}")
        shape = (batch_size, cfg.n_heads, max_length, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.max_length = max_length
        self.length = 0
        self.pad_lengths = pad_lengths.to(device) if pad_lengths is not None else None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions of ``layer`` and return all cached keys and values."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_tokens: int) -> None:
        self.length += n_tokens

    def rows(self, n: int) -> KVCache:
        """The first ``n`` rows as a cache of their own that writes into this one."""
        view = copy.copy(self)
        view.keys = [k[:n] for k in self.keys]
        view.values = [v[:n] for v in self.values]
        view.pad_lengths = self.pad_lengths[:n] if self.pad_lengths is not None else None
        return view


@dataclass(frozen=True)
class KeptPositions:
    """The positions of a ``[batch, seq]`` batch that are computed: ``index`` into the
    flattened batch, in order, a prefix of each row. Integer indices rather than a boolean
    mask, so that moving rows in and out never waits on the GPU."""

    index: torch.Tensor
    batch: int
    seq: int

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` -> the kept rows ``[N, C]``."""
        return values.reshape(self.batch * self.seq, -1).index_select(0, self.index)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """The kept rows ``[N, C]`` -> ``[B, T, C]``, zeros elsewhere."""
        flat = values.new_zeros(self.batch * self.seq, values.shape[-1]).index_copy_(0, self.index, values)
        return flat.view(self.batch, self.seq, -1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.drop_rate = cfg.drop_rate
        self.resid_drop = nn.Dropout(cfg.drop_rate)
        self.attend = attention

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None, kept: KeptPositions | None = None) -> torch.Tensor:
        """``x [B, T, C]``; or, with ``kept``, only the kept positions ``[N, C]``: they are laid
        out ``[B, T]`` for attention alone."""
        qkv = self.qkv(x)
        if kept is not None:
            qkv = kept.scatter(qkv)
        batch, seq, _ = qkv.shape
        q, k, v = qkv.view(batch, seq, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        is_causal = bool(mask is None and (cache is None or cache.length == 0) and seq > 1)  # not symbolic
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = self.attend(q, k, v, mask, is_causal, dropout_p=self.drop_rate if self.training else 0.0)
        y = y.transpose(1, 2).reshape(batch, seq, -1)
        return self.resid_drop(self.out_proj(y if kept is None else kept.gather(y)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention of ``q [B, H, T, D]`` over ``k, v [B, H, S, D]``; ``mask`` True where a query
    may attend a key."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)


def _attention_mask(start: int, seq: int, pad_lengths: torch.Tensor | None,
                    device: torch.device) -> torch.Tensor | None:
    """Which keys each of the ``seq`` new queries (after ``start`` cached positions) may
    see (True: attend), or None when SDPA's causal flag, or no mask at all (a single
    query), says the same."""
    if pad_lengths is None and (start == 0 or seq == 1):
        return None
    query_pos = torch.arange(start, start + seq, device=device)
    key_pos = torch.arange(start + seq, device=device)
    mask = key_pos[None, :] <= query_pos[:, None]  # [T, S] causal
    if pad_lengths is not None:  # [B, 1, T, S]: no padding key, but a pad query sees itself
        not_pad = key_pos[None, :] >= pad_lengths[:, None]
        mask = (mask[None] & not_pad[:, None, :]) | (key_pos[None, None, :] == query_pos[None, :, None])
        mask = mask[:, None]
    return mask


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU: the tanh approximation."""
    return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.activate = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.activate(self.fc(x))))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.att = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.ff = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None, kept: KeptPositions | None = None) -> torch.Tensor:
        x = x + self.att(self.norm1(x), cache, layer, mask, kept)
        return x + self.ff(self.norm2(x))


class GPTModel(nn.Module):
    """GPT-2: token and position embeddings, pre-LayerNorm blocks, final norm, LM head."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that write into the residual stream.
        for name, param in self.named_parameters():
            if name.endswith(("att.out_proj.weight", "ff.proj.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def use_kernels(self, attention_fn=None, gelu_fn=None) -> GPTModel:
        """Compute every block's attention with ``attention_fn`` (``attention``'s arguments and
        result) and its MLP's activation with ``gelu_fn`` (``gelu``'s); None: the reference. A
        backend's faster kernels for the same result."""
        for module in self.modules():
            if isinstance(module, CausalSelfAttention):
                module.attend = attention_fn or attention
            elif isinstance(module, FeedForward):
                module.activate = gelu_fn or gelu
        return self

    def num_parameters(self) -> int:
        """Trainable parameters, a tied head counted once (the published GPT-2 sizes)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_length: int | None = None,
                  pad_lengths: torch.Tensor | None = None) -> KVCache:
        param = self.tok_emb.weight
        return KVCache(self.cfg, batch_size, max_length, device=param.device, dtype=param.dtype,
                       pad_lengths=pad_lengths)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      kept: KeptPositions | None = None) -> torch.Tensor:
        """The final-normed hidden states ``[B, T, emb_dim]`` (the input of the LM head).

        ``kept`` (no cache), a prefix of each row: compute only those positions and return
        them ``[N, emb_dim]``. Causal attention makes them independent of the rest, so the
        right padding of a batch costs nothing but in attention.
        """
        self._check_input(idx, cache)
        if kept is not None and cache is not None:
            raise ValueError("kept positions and a KV cache cannot be combined")
        if idx.dtype not in (torch.int64, torch.int32):
            idx = idx.long()
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        mask = None
        if cache is not None:
            mask = _attention_mask(start, idx.shape[1], cache.pad_lengths, idx.device)
            if cache.pad_lengths is not None:
                positions = (positions[None, :] - cache.pad_lengths[:, None]).clamp(min=0)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(positions))
        if kept is not None:
            x = kept.gather(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, mask, kept)
        if cache is not None:
            cache.advance(idx.shape[1])
        return self.final_norm(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]`` for token ids ``[B, T]``.

        With a ``cache``, ``idx`` holds only the new tokens; their positions continue
        after the cached ones and the cache grows by ``T``.
        """
        return self.out_head(self.hidden_states(idx, cache))

    def _check_input(self, idx: torch.Tensor, cache: KVCache | None) -> None:
        if not isinstance(idx, torch.Tensor):
            raise ValueError(f"GPTModel expects a LongTensor of token ids, got {type(idx).__name__}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got a tensor of dtype {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"token ids must have shape [batch, seq_len], got {tuple(idx.shape)}")
        past = cache.length if cache is not None else 0
        limit = cache.max_length if cache is not None else self.cfg.context_length
        if past + idx.shape[1] > limit:
            raise ValueError(
                f"sequence of {past + idx.shape[1]} tokens"
                f"{f' ({past} cached + {idx.shape[1]} new)' if past else ''} exceeds the "
                f"{'KV cache size' if cache is not None else 'context length'} of {limit}; "
                f"truncate the input"
            )
