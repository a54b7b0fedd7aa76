"""OpenAI's GPT-2 weights: where to get them, and how they map onto ``GPTModel``."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from gpt2_lightning import resources
from gpt2_lightning.errors import CheckpointMismatchError, ConfigError
from gpt2_lightning.fetch import download, sha256_of
from gpt2_lightning.io import read_json
from gpt2_lightning.model.gpt import GPT2_ALIASES, GPTConfig, GPTModel

# Hugging Face GPT-2 submodule name -> ours. Conv1D layers store weights as [in, out].
_LAYER_KEYS = {
    "ln_1": ("norm1", False),
    "attn.c_attn": ("att.qkv", True),
    "attn.c_proj": ("att.out_proj", True),
    "ln_2": ("norm2", False),
    "mlp.c_fc": ("ff.fc", True),
    "mlp.c_proj": ("ff.proj", True),
}
_TOP_KEYS = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight",
             "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias",
             "lm_head.weight": "out_head.weight"}
# Causal-mask buffers that older exports carry; they are not weights.
_BUFFER_KEY = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_LAYER_KEY = re.compile(r"^h\.(\d+)\.(.+)\.(weight|bias)$")



def convert_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face GPT-2 state dict as a ``GPTModel`` state dict.

    Accepts keys with or without the ``transformer.`` prefix; transposes the Conv1D
    weights; fills a missing ``lm_head.weight`` from the token embedding (tied head).
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("transformer.")
        if _BUFFER_KEY.match(key):
            continue
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = tensor
            continue
        match = _LAYER_KEY.match(key)
        if match is None or match.group(2) not in _LAYER_KEYS:
            raise CheckpointMismatchError(f"unexpected tensor {key!r} in a GPT-2 checkpoint")
        layer, hf_name, kind = match.groups()
        name, conv1d = _LAYER_KEYS[hf_name]
        out[f"blocks.{layer}.{name}.{kind}"] = tensor.t() if conv1d and kind == "weight" else tensor
    if "tok_emb.weight" not in out:
        raise CheckpointMismatchError("not a GPT-2 checkpoint: no token embedding 'wte.weight'")
    out.setdefault("out_head.weight", out["tok_emb.weight"])
    return out


def to_hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s weights in the layout of Hugging Face's ``GPT2LMHeadModel`` (the inverse
    of ``convert_hf_state_dict``): Conv1D weights transposed, a zero query/key/value bias
    where the model has none, and no ``lm_head.weight`` when the head is tied."""
    out: dict[str, torch.Tensor] = {}
    state = model.state_dict()
    for hf_key, key in _TOP_KEYS.items():
        if key == "out_head.weight":
            if model.cfg.tie_weights:
                continue
            out[hf_key] = state[key]
        else:
            out[f"transformer.{hf_key}"] = state[key]
    for layer in range(model.cfg.n_layers):
        for hf_name, (name, conv1d) in _LAYER_KEYS.items():
            weight = state[f"blocks.{layer}.{name}.weight"]
            bias = state.get(f"blocks.{layer}.{name}.bias")
            if bias is None:
                bias = weight.new_zeros(weight.shape[0])
            out[f"transformer.h.{layer}.{hf_name}.weight"] = weight.t() if conv1d else weight
            out[f"transformer.h.{layer}.{hf_name}.bias"] = bias
    return {key: tensor.detach().cpu().contiguous() for key, tensor in out.items()}


def infer_config(state_dict: dict[str, torch.Tensor], **overrides) -> GPTConfig:
    """The ``GPTConfig`` whose shapes match a converted state dict.

    The head count is not stored in the weights: it is taken from the GPT-2 size with the
    same width, and must be given for other widths.
    """
    vocab_size, emb_dim = state_dict["tok_emb.weight"].shape
    n_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    values = dict(vocab_size=vocab_size, emb_dim=emb_dim, n_layers=n_layers,
                  context_length=state_dict["pos_emb.weight"].shape[0],
                  qkv_bias="blocks.0.att.qkv.bias" in state_dict,
                  tie_weights=torch.equal(state_dict["out_head.weight"], state_dict["tok_emb.weight"]))
    if "n_heads" not in overrides:
        widths = {768: 12, 1024: 16, 1280: 20, 1600: 25}
        if emb_dim not in widths:
            raise CheckpointMismatchError(
                f"cannot tell the number of attention heads of a width-{emb_dim} checkpoint; "
                f"give n_heads explicitly")
        values["n_heads"] = widths[emb_dim]
    return GPTConfig(**{**values, **overrides})


def load_state_dict_checked(model: GPTModel, state_dict: dict[str, torch.Tensor],
                            source: str = "checkpoint", assign: bool = False) -> None:
    """``model.load_state_dict`` with errors that name the tensor and both shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source} does not fit the model: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, target in expected.items():  # model order: the first mismatch is the root cause
        if state_dict[key].shape != target.shape:
            raise CheckpointMismatchError(
                f"{source}: tensor {key!r} has shape {tuple(state_dict[key].shape)} but the model "
                f"expects {tuple(target.shape)} (is it another model size?)")
    model.load_state_dict(state_dict, assign=assign)


def model_with_weights(config: GPTConfig, state_dict: dict[str, torch.Tensor], source: str) -> GPTModel:
    """A ``GPTModel`` of ``config`` that holds ``state_dict``'s tensors themselves (as float32):
    built on the meta device, so no memory or time goes into a random initialisation."""
    with torch.device("meta"):
        model = GPTModel(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    load_state_dict_checked(model, state, source=source, assign=True)
    if config.tie_weights:  # assigning made the head a parameter of its own
        model.out_head.weight = model.tok_emb.weight
    return model


# ---------------------------------------------------------------------------------------
# Finding and loading weights
# ---------------------------------------------------------------------------------------

HUB_REPOS = {"gpt2-small": "gpt2", "gpt2-medium": "gpt2-medium", "gpt2-large": "gpt2-large",
             "gpt2-xl": "gpt2-xl"}
HUB_URL = "https://huggingface.co/openai-community/{repo}/resolve/main/model.safetensors"
WEIGHTS_FILE = "model.safetensors"


def hub_url(name: str) -> str:
    """The public ``model.safetensors`` of a GPT-2 size on the Hugging Face hub."""
    canonical = GPT2_ALIASES.get(name.lower(), name.lower())
    if canonical not in HUB_REPOS:
        raise ConfigError(f"no public checkpoint for {name!r}; choose one of {', '.join(HUB_REPOS)}")
    return HUB_URL.format(repo=HUB_REPOS[canonical])


def resolve_weights(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                    sha256: str | None = None, progress: bool = True) -> Path:
    """The local safetensors file for a GPT-2 size, a URL, a file or a folder.

    Sizes and URLs are downloaded once into ``cache_dir`` and reused afterwards.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else resources.cache_dir()
    spec = os.fspath(name_or_path)
    if spec.startswith(("http://", "https://")):
        digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
        return download(spec, cache_dir / "url" / digest / WEIGHTS_FILE, sha256=sha256, progress=progress)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"folder {path} holds no {WEIGHTS_FILE}")
        return path / WEIGHTS_FILE
    if path.is_file():
        return path
    canonical = GPT2_ALIASES.get(spec.lower(), spec.lower())
    if canonical in HUB_REPOS:
        return download(hub_url(canonical), cache_dir / canonical / WEIGHTS_FILE, sha256=sha256,
                        progress=progress)
    raise FileNotFoundError(f"weights {spec!r} are neither a file, a folder, a URL nor a GPT-2 "
                            f"size ({', '.join(HUB_REPOS)})")


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with a clear error for anything else."""
    try:
        return safetensors.torch.load_file(os.fspath(path))
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise CheckpointMismatchError(f"{path} is not a readable safetensors file ({err})") from None


def heads_from_hf_config(weights: Path) -> int | None:
    """``n_head`` from a ``config.json`` lying beside the weights (Hugging Face's, or the project's export), if any."""
    config = read_json(weights.with_name("config.json"), missing=None, invalid=None)
    try:  # Hugging Face's key, else the project's export config
        return int(config["n_head"] if "n_head" in config else config["model"]["n_heads"])
    except (ValueError, KeyError, TypeError):
        return None


def load_pretrained(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                    sha256: str | None = None, progress: bool = True, **config_overrides) -> GPTModel:
    """A ``GPTModel`` holding GPT-2 weights given by size name, URL, file or folder: OpenAI's
    or Hugging Face's layout, or this project's own export (``export/model.safetensors``).

    The shape is read off the weights; ``config_overrides`` set the rest (``drop_rate``)
    or what the weights cannot tell (``n_heads`` of a non-standard width).
    """
    path = resolve_weights(name_or_path, cache_dir, sha256=sha256, progress=progress)
    tensors = read_safetensors(path)
    if "tok_emb.weight" in tensors:  # already GPTModel's names: the project's own export (a tied head stored once)
        state_dict = {"out_head.weight": tensors["tok_emb.weight"], **tensors}
    else:
        state_dict = convert_hf_state_dict(tensors)
    if "n_heads" not in config_overrides and (heads := heads_from_hf_config(path)):
        config_overrides["n_heads"] = heads
    return model_with_weights(infer_config(state_dict, **config_overrides), state_dict, str(path))


def base_identity(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """What names a set of base weights for the adapters trained on it: the spec the user gave,
    the local file it resolved to, and that file's sha256."""
    path = resolve_weights(name_or_path, cache_dir)
    return {"weights": os.fspath(name_or_path), "path": str(path.resolve()), "sha256": sha256_of(path)}


def load_base(identity: dict[str, str], cache_dir: str | os.PathLike | None = None, **config_overrides) -> GPTModel:
    """The base weights ``identity`` names (its file, else its spec resolved again), checked
    against its sha256."""
    path = Path(identity["path"])
    if not path.is_file():
        path = resolve_weights(identity["weights"], cache_dir)
    digest = sha256_of(path)
    if digest != identity["sha256"]:
        raise CheckpointMismatchError(
            f"the adapters were trained on the base weights {identity['weights']} (sha256 {identity['sha256'][:16]}...), "
            f"but {path} has sha256 {digest[:16]}...; give the same base weights (model.weights=...)")
    return load_pretrained(path, **config_overrides)
