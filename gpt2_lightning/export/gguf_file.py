"""One ``.gguf`` file that llama.cpp (and so Ollama, LM Studio, llama-cpp-python) runs:
weights in llama.cpp's ``gpt2`` layout, the GPT-2 vocabulary and merges, the end-of-text
token and the prompt style's chat template."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.export.templates import jinja_chat_template
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import EOT_ID, bpe_vocab_and_merges

GGUF_DTYPES = ("float32", "float16", "bfloat16", "q8_0")

# Our module names -> llama.cpp's tensor names for the gpt2 architecture.
_TOP_NAMES = {"tok_emb": "token_embd", "pos_emb": "position_embd", "final_norm": "output_norm",
              "out_head": "output"}
_BLOCK_NAMES = {"norm1": "attn_norm", "att.qkv": "attn_qkv", "att.out_proj": "attn_output",
                "norm2": "ffn_norm", "ff.fc": "ffn_up", "ff.proj": "ffn_down"}


def gguf_tensors(model: GPTModel) -> dict[str, torch.Tensor]:
    """The model's tensors under llama.cpp's names, in float32; a zero query/key/value bias
    where the model has none (llama.cpp's gpt2 needs one), no head when it is tied."""
    state = model.state_dict()
    out = {}
    for ours, theirs in _TOP_NAMES.items():
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in state and not (ours == "out_head" and model.cfg.tie_weights):
                out[f"{theirs}.{kind}"] = state[f"{ours}.{kind}"]
    for layer in range(model.cfg.n_layers):
        for ours, theirs in _BLOCK_NAMES.items():
            weight = state[f"blocks.{layer}.{ours}.weight"]
            out[f"blk.{layer}.{theirs}.weight"] = weight
            out[f"blk.{layer}.{theirs}.bias"] = state.get(f"blocks.{layer}.{ours}.bias", weight.new_zeros(weight.shape[0]))
    return {name: tensor.detach().float().cpu().contiguous() for name, tensor in out.items()}


def export_gguf(model: GPTModel, style: PromptStyle, path: Path, dtype: str = "float32", name: str = "gpt2") -> None:
    """Write ``model`` into the GGUF file ``path``. Matrices take ``dtype``; norms and biases
    stay float32, as llama.cpp's own converter keeps them. ``q8_0`` needs rows of a multiple
    of 32 values: a matrix whose rows are not is stored as float16."""
    qtypes = {"float32": gguf.GGMLQuantizationType.F32, "float16": gguf.GGMLQuantizationType.F16,
              "bfloat16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    file_types = {"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
                  "bfloat16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    cfg = model.cfg
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_name(name)
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.emb_dim)
    writer.add_feed_forward_length(4 * cfg.emb_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_layer_norm_eps(1e-5)
    writer.add_file_type(file_types[dtype])

    vocab, merges = bpe_vocab_and_merges()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(list(vocab))
    writer.add_token_types([gguf.TokenType.CONTROL if i == EOT_ID else gguf.TokenType.NORMAL for i in vocab.values()])
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    writer.add_bos_token_id(EOT_ID)
    writer.add_eos_token_id(EOT_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(jinja_chat_template(style))

    for tensor_name, tensor in gguf_tensors(model).items():
        data = tensor.numpy()
        qtype = qtypes[dtype] if data.ndim == 2 else gguf.GGMLQuantizationType.F32
        if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            qtype = gguf.GGMLQuantizationType.F16
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, data)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor_name, data.astype(np.float16))
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
