"""Standard benchmarks through EleutherAI's lm-evaluation-harness, run on the project's own model:
``GPT2LM`` answers lm-eval's requests with ``GPTModel`` and tiktoken (no conversion to
transformers), ``run_benchmarks`` evaluates tasks with it, ``save_benchmarks`` keeps the results
in a run's ``benchmarks.json``."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import yaml

from gpt2_lightning.errors import ConfigError, DataError
from gpt2_lightning.evaluate.likelihood import score_tokens
from gpt2_lightning.fetch import unreachable_hub
from gpt2_lightning.generation.engine import BatchEngine
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.generation.stream import TextStream, generation_for
from gpt2_lightning.io import read_json, write_json
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import EOT_ID, encode

INSTALL_HINT = "benchmarks need lm-evaluation-harness: pip install 'gpt2-lightning[eval]'"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}  # datasets' readers of local files
HUB_TIMEOUT = 5.0  # seconds to reach the hub before saying it cannot be


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.api.model import TemplateLM
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return lm_eval, TemplateLM


def lm_for(model: GPTModel, batch_size: int = 8):
    """lm-eval's ``LM`` over ``model``."""
    _, TemplateLM = _lm_eval()

    class GPT2LM(TemplateLM):
        """The requests of lm-eval's tasks answered by a ``GPTModel``: log-likelihoods through
        ``score_tokens`` (the head only where a continuation is scored), generations on the batch
        engine. Requests are encoded and truncated as lm-eval's ``hf`` model does them, so the
        scores are the same."""

        def __init__(self):
            super().__init__()
            self.model = model.eval()
            self.batch_size = batch_size
            self.max_length = model.cfg.context_length

        @property
        def eot_token_id(self) -> int:
            return EOT_ID

        def tok_encode(self, string: str, **kwargs) -> list[int]:
            return encode(string)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            sequences = []
            for _, context_enc, continuation_enc in requests:
                ids = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
                sequences.append((ids, len(ids) - len(continuation_enc)))
            scores = score_tokens(self.model, sequences, batch_size=self.batch_size)
            answers = [(s.total, s.all_greedy) for s in scores]
            for (key, _, _), answer in zip(requests, answers):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            return answers

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

            totals = []
            for request in requests:
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    token_list=self.tok_encode(request.args[0]), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)]
                scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
                totals.append(sum(logprob for logprob, _ in scores))
                self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), totals[-1])
            return totals

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            return generate_until(self.model, [r.args for r in requests], self.batch_size)

    return GPT2LM()


def generate_until(model: GPTModel, requests: Sequence[tuple[str, dict]], batch_size: int) -> list[str]:
    """lm-eval's ``generate_until``: each context continued until one of its ``until`` strings
    (or end-of-text, or ``max_gen_toks``), all decoded together on one batch engine. As in lm-eval's
    ``hf`` model, the context is cut from the left to leave room for the answer, sampling happens
    only with ``do_sample`` or a temperature above 0, and the text is cut before the stop string."""
    context = model.cfg.context_length
    with BatchEngine(model, max_batch_size=batch_size, max_queue=max(1, len(requests))) as engine:
        answers = []
        for text, settings in requests:
            settings = dict(settings or {})
            until = settings.pop("until", None) or []
            temperature = float(settings.pop("temperature", 0.0) or 0.0)
            if not settings.pop("do_sample", temperature > 0):
                temperature = 0.0
            params = SamplingParams(max(1, min(int(settings.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), context - 1)),
                                    temperature, None, settings.pop("top_p", None), settings.pop("seed", None))
            answers.append(_UntilStop(encode(text)[-(context - params.max_new_tokens):] or [EOT_ID],
                                      [until] if isinstance(until, str) else until, params, engine.device))
        engine.submit_all([answer.seq for answer in answers])
        for answer in answers:
            answer.done.wait()
    return [answer.stream.text for answer in answers]


class _UntilStop:
    """One ``generate_until`` answer: its text, cut at the first stop string, which also ends its
    sequence."""

    def __init__(self, prompt_ids: list[int], until: Sequence[str], params: SamplingParams, device):
        self.stream = TextStream(prompt_ids, until, answer=False)
        self.done = threading.Event()
        self.seq = generation_for(self.stream, self._deliver, params, params.generator(device))

    def _deliver(self, item) -> None:
        if isinstance(item, tuple):  # the end and its reason: the text so far is the answer
            self.stream.end(item[1])
            self.done.set()
            return
        self.stream.push(item)
        if self.stream.finish_reason == "stop":
            self.seq.cancel()


def run_benchmarks(model: GPTModel, tasks: Sequence[str], include_path: str | Path | None = None,
                   num_fewshot: int | None = None, limit: int | float | None = None, batch_size: int = 8,
                   log_samples: bool = False) -> dict:
    """lm-eval's results for ``tasks`` (names, groups or task YAML files; ``include_path``: a
    folder of more task files) on ``model``. An unknown task, or a task whose data is on the
    Hugging Face hub while the hub cannot be reached, stops before anything runs."""
    lm_eval, _ = _lm_eval()
    manager = task_manager(tasks, include_path)
    missing = [t for t in tasks if not Path(t).is_file() and not manager.match_tasks([t])]
    if missing:
        raise ConfigError(f"unknown lm-eval task{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
                          f"(`lm_eval ls tasks` lists them; --include-path adds a folder of task files)")
    check_hub(manager, tasks)
    try:
        return lm_eval.simple_evaluate(model=lm_for(model, batch_size), tasks=list(tasks), num_fewshot=num_fewshot,
                                       limit=limit, task_manager=manager, log_samples=log_samples,
                                       batch_size=batch_size)
    except ConnectionError as err:
        raise DataError(f"the tasks' data could not be fetched ({err}); offline, use local task files "
                        "(--include-path) or a cache filled where there is network (HF_DATASETS_OFFLINE=1)") from None


def task_manager(tasks: Sequence[str], include_path: str | Path | None):
    """lm-eval's index of the tasks: only ``include_path``'s where it holds them all (indexing
    lm-eval's own thousands of task files takes seconds), else lm-eval's and ``include_path``'s."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(Path(t).is_file() or local.match_tasks([t]) for t in tasks):
            return local
    return TaskManager(include_path=str(include_path) if include_path else None)


def check_hub(manager, tasks: Sequence[str]) -> None:
    """Stop at once, naming the tasks, when some need the Hugging Face hub and it cannot be
    reached (datasets would retry for half a minute first); with ``HF_DATASETS_OFFLINE=1`` the
    cache is used and nothing is checked."""
    if os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        return
    needing = [t for t in tasks if _on_the_hub(manager, t)]
    unreachable = unreachable_hub(HUB_TIMEOUT) if needing else None
    if unreachable is not None:
        host, err = unreachable
        raise DataError(f"{', '.join(needing)}: the task data is on the Hugging Face hub, and {host} cannot be "
                        f"reached ({err}); offline, use local task files (--include-path), or a cache filled "
                        "where there is network with HF_DATASETS_OFFLINE=1")


def _on_the_hub(manager, task: str) -> bool:
    """Whether ``task``'s data comes from the hub (a group or tag: assumed so)."""
    if Path(task).is_file():
        config = yaml.load(Path(task).read_text(encoding="utf-8"), Loader=_TaskLoader)
    else:
        entry = manager.task_index.get(task)
        config = entry.cfg if entry is not None and entry.cfg and entry.kind.name == "TASK" else None
    if config is None:
        return True
    path = config.get("dataset_path")
    return bool(path) and path not in LOCAL_BUILDERS and not Path(path).exists()


class _TaskLoader(yaml.SafeLoader):
    """Reads a task file's plain settings; its ``!function`` tags (Python code) read as None."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def save_benchmarks(path: Path, results: dict, model_name: str) -> dict:
    """Merge ``results`` of the model ``model_name`` into the benchmarks file ``path``: tasks
    evaluated again replace their old results, the others stay; a file of another model's results
    is an error. Returns what the file now holds."""
    from lm_eval.utils import handle_non_serializable

    kept = read_json(path, missing={})
    if not isinstance(kept, dict):
        raise DataError(f"{path}: expected lm-eval's results as a JSON object; move it away or give --out")
    if kept.get("model_name", model_name) != model_name:
        raise DataError(f"{path} holds the results of {kept['model_name']}, not {model_name}; give --out")
    kept["model_name"] = model_name
    new = json.loads(json.dumps({k: v for k, v in results.items() if k != "samples"}, default=handle_non_serializable))
    for key in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples"):
        if key in new:
            kept[key] = {**kept.get(key, {}), **new[key]}
    kept.update({k: v for k, v in new.items() if k not in kept or not isinstance(v, dict)})
    write_json(path, kept)
    return kept


def results_table(results: dict) -> str:
    """lm-eval's own table of ``results``."""
    from lm_eval.utils import make_table

    return make_table(results)
