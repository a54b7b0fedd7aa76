"""The model a generating verb (chat, respond, prefs, serve) works with: the options that name it,
and loading it on its device, in its dtype, with its prompt style."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2_lightning.data.prompts import PromptStyle, get_style
from gpt2_lightning.errors import ConfigError
from gpt2_lightning.export.load import load_model
from gpt2_lightning.generation.placement import placed_for_generation
from gpt2_lightning.generation.respond import DEFAULT_PARAMS, respond
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.model.gpt import GPTModel


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a run directory, export folder, .ckpt, or GPT-2 weights (a size name, "
                        ".safetensors file or folder, URL)")
    parser.add_argument("--style", help="prompt style (default: the one the model was trained with)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto: cuda where there is a GPU, "
                        "else cpu (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", help="weights for generation: auto (on a CPU, bf16 where it "
                        "measures faster than float32 here), float32, bfloat16 or float16")


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults: SamplingParams) -> None:
    """How a verb samples its answers (``SamplingParams``), with that verb's defaults; the same
    flags in every verb."""
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help="longest answer in tokens (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help="0: greedy (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=defaults.top_k,
                        help="sample from the k most likely tokens only (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=defaults.top_p,
                        help="sample from the smallest set of tokens holding this mass (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="for reproducible sampling (default: %(default)s; none: a fresh one)")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The ``SamplingParams`` of the flags ``add_sampling_arguments`` added; bad values are a ConfigError."""
    try:
        return SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    except ValueError as err:
        raise ConfigError(f"sampling settings: {err}") from None


def model_for_generation(args: argparse.Namespace) -> tuple[GPTModel, PromptStyle]:
    """The model ``args`` name, ready to generate, and its prompt style."""
    model, meta = load_model(args.model)
    model = placed_for_generation(model, device=args.device, dtype=args.dtype)
    return model, get_style(args.style or meta["prompt_style"])


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the sampling (greedy by default) and the batch size of the verbs that answer
    many records into a file (respond, prefs)."""
    add_model_arguments(parser)
    add_sampling_arguments(parser, DEFAULT_PARAMS)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts answered together (default: %(default)s)")


def answer_into(args: argparse.Namespace, records: list[dict], out: Path) -> list[dict]:
    """``records`` answered by the model of ``args`` with its sampling settings, into ``out``
    (resumed where an earlier answer of the same settings stopped)."""
    model, style = model_for_generation(args)
    return respond(model, records, out, style, sampling_params(args), args.batch_size)
