"""Export a model for other tools: Hugging Face transformers, llama.cpp (GGUF) or Ollama.

hf: a folder that AutoModelForCausalLM and AutoTokenizer load as it is, with the prompt
style as its chat template and a model card. gguf: one .gguf file for llama.cpp. ollama:
the .gguf file and a Modelfile (then: ollama create NAME -f OUT/Modelfile). A LoRA run is
exported with its adapters merged, or alone with --adapter-only (PEFT). The folder
appears whole when the export succeeds, and never replaces one unless --force is given.
"""

from __future__ import annotations

import argparse

from gpt2_lightning.export.formats import FORMAT_DTYPES, export_to


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a run directory, export folder, .ckpt, or GPT-2 weights")
    parser.add_argument("--format", required=True, dest="fmt", metavar="FORMAT",
                        help=f"one of {', '.join(FORMAT_DTYPES)}")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    parser.add_argument("--dtype", default="float32", help="weights: float32, float16 or bfloat16; gguf and "
                        "ollama also q8_0 (8-bit; norms and biases stay float32) (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace --out if it already holds files")
    parser.add_argument("--adapter-only", action="store_true", help="with --format hf, a LoRA run's adapters "
                        "alone in the PEFT format (load them with peft onto the base's Hugging Face model)")


def run(args: argparse.Namespace) -> None:
    print(export_to(args.model, args.fmt, args.out, args.dtype, args.force, args.adapter_only))
