"""Answer instructions with a model and save them as JSON (resumes an interrupted file).

Without --records, MODEL must be a run directory: its test split is answered into
<run>/responses.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from gpt2_lightning.apps.common import TEST_SPLIT_FILE
from gpt2_lightning.apps.inference import add_model_arguments, add_sampling_arguments, model_for_generation
from gpt2_lightning.data.records import load_records
from gpt2_lightning.generation.respond import GenerationSettings, read_instructions, respond
from gpt2_lightning.resources import register_resolvers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GenerationSettings()
    add_model_arguments(parser)
    parser.add_argument("--records", type=Path, help="JSON/JSONL records, or a text file with one instruction "
                        "per line")
    parser.add_argument("--out", type=Path, help="output JSON (default: <run>/responses.json, or "
                        "<records>-responses.json)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help="longest answer in tokens (default: %(default)s)")
    add_sampling_arguments(parser, defaults.temperature, defaults.top_k)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="prompts answered together (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="for sampling (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    if args.records is None:
        records = run_test_split(Path(args.model))
        out = args.out or Path(args.model) / "responses.json"
    else:
        records = read_instructions(args.records)
        out = args.out or args.records.with_name(f"{args.records.stem}-responses.json")
    model, style = model_for_generation(args)
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                  args.batch_size, args.seed)
    answered = respond(model, records, out, style, settings)
    print(f"{len(answered)} responses in {out}")


def run_test_split(run_dir: Path) -> list[dict]:
    """The test records of a training run: the split it saved, else (runs of older versions)
    split again from its saved data config."""
    if (run_dir / TEST_SPLIT_FILE).is_file():
        return load_records(run_dir / TEST_SPLIT_FILE)
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {TEST_SPLIT_FILE}); give --records")
    register_resolvers()
    datamodule = hydra.utils.instantiate(OmegaConf.load(config).data)
    datamodule.setup()
    return datamodule.datasets["test"].records
