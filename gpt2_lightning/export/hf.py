"""A Hugging Face ``transformers`` folder: ``AutoModelForCausalLM`` and ``AutoTokenizer``
load it as it is, with no remote code."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.export.templates import jinja_chat_template
from gpt2_lightning.io import atomic_write, write_json
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.pretrained import WEIGHTS_FILE, to_hf_state_dict
from gpt2_lightning.model.tokenizer import EOT_ID, EOT_TOKEN, bpe_vocab_and_merges

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The key under which config.json keeps what transformers has no field for; loading the folder
# back into this project reads the prompt style from it.
PROJECT_KEY = "gpt2_lightning"


def hf_config(model: GPTModel, style: PromptStyle, dtype: str) -> dict:
    cfg = model.cfg
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,  # llama.cpp's converter reads this name
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "tie_word_embeddings": cfg.tie_weights,
        "torch_dtype": dtype,
        PROJECT_KEY: {"prompt_style": style.name},
    }


def write_tokenizer(folder: Path, style: PromptStyle, max_length: int) -> None:
    """``vocab.json``, ``merges.txt`` and the tokenizer settings, with the chat template."""
    vocab, merges = bpe_vocab_and_merges()
    write_json(folder / "vocab.json", vocab)
    with atomic_write(folder / "merges.txt") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    write_json(folder / "special_tokens_map.json", special)
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer",
        **special,
        "add_prefix_space": False,
        "add_bos_token": False,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(EOT_ID): {"content": EOT_TOKEN, "lstrip": False, "rstrip": False,
                                               "normalized": True, "single_word": False, "special": True}},
        "chat_template": jinja_chat_template(style),
    })


def export_hf(model: GPTModel, style: PromptStyle, folder: Path, dtype: str = "float32") -> None:
    """Write ``model`` with its tokenizer and prompt style into ``folder`` (which exists)."""
    state = {k: v.to(TORCH_DTYPES[dtype]) for k, v in to_hf_state_dict(model).items()}
    with atomic_write(folder / WEIGHTS_FILE, binary=True) as f:
        f.write(safetensors.torch.save(state, metadata={"format": "pt"}))
    write_json(folder / "config.json", hf_config(model, style, dtype))
    write_json(folder / "generation_config.json",
               {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID})
    write_tokenizer(folder, style, model.cfg.context_length)
