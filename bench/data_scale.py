"""Data setup at Alpaca-52k scale: a synthetic file of 52,002 records shaped like Stanford
Alpaca's (instructions of ~15 words, 40% with an input, answers of ~45 words) read,
validated, split and tokenised by ``InstructionDataModule.setup``; then the same again with
the token cache filled; and the memory the token ids take (numpy arrays) against lists of
Python ints. Each setup runs in a fresh process.

    python bench/data_scale.py [--records 52002]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

WORDS = ("the of and to in is for that with as on are this be by from it or an which can at have more "
         "data model answer question write explain list describe give example three simple words sentence "
         "color water energy people system process time different important make use number first").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_records(path: Path, n: int) -> None:
    rng = random.Random(0)
    records = [{"instruction": sentence(rng, rng.randint(6, 25)),
                "input": sentence(rng, rng.randint(4, 30)) if rng.random() < 0.4 else "",
                "output": " ".join(sentence(rng, rng.randint(5, 20)) for _ in range(rng.randint(1, 5)))}
               for _ in range(n)]
    path.write_text(json.dumps(records))


def setup_once(path: str, cache: str) -> None:
    """One data setup in this process; prints seconds, examples, tokens, bytes and peak RSS."""
    from gpt2_lightning.data.datamodule import InstructionDataModule
    from gpt2_lightning.model.tokenizer import get_tokenizer

    get_tokenizer()  # loading the vocabulary is not data setup
    start = time.perf_counter()
    dm = InstructionDataModule(path=path, token_cache_dir=cache)
    dm.setup()
    elapsed = time.perf_counter() - start
    sets = dm.datasets.values()
    tokens = sum(len(d.ids) for d in sets)
    held = sum(d.ids.nbytes + d.scored.nbytes + d.offsets.nbytes for d in sets)
    print(json.dumps({"seconds": elapsed, "examples": sum(len(d) for d in sets), "tokens": tokens, "bytes": held,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=52002)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        setup_once(*args.one)
        return
    print(machine())
    with tempfile.TemporaryDirectory() as work:
        data, cache = Path(work) / "alpaca-52k.json", Path(work) / "tokens"
        write_records(data, args.records)
        print(f"{args.records} records, {data.stat().st_size / 2 ** 20:.1f} MiB of JSON")
        for label in ("first setup (read, validate, split, tokenise, fill the cache)", "second setup (cache filled)"):
            out = subprocess.run([sys.executable, __file__, "--one", str(data), str(cache)], capture_output=True,
                                 text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(f"  {label}: {result['seconds']:.2f} s; peak RSS {result['peak_rss_gib']:.2f} GiB")
        # A list of Python ints costs 8 bytes a pointer plus 28-32 bytes an int object (small
        # ints up to 256 are shared), the old layout; the arrays cost 3 bytes a token.
        as_lists = result["tokens"] * (8 + 32)
        print(f"  {result['examples']} examples, {result['tokens']} tokens: {result['bytes'] / 2 ** 20:.1f} MiB as numpy "
              f"arrays (uint16 ids, bool flags, int64 offsets) vs ~{as_lists / 2 ** 20:.0f} MiB as lists of Python ints")


if __name__ == "__main__":
    main()
