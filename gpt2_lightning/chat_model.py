"""``ChatModel``: a model to talk to from a notebook or a script.

    from gpt2_lightning import ChatModel

    model = ChatModel.load("outputs/2026-12-02/10-00-00")   # anything load_model takes
    model.generate("Name three primary colors.")
    model.chat([{"role": "user", "content": "Name a color."}], temperature=0.7, seed=1)
    for piece in model.stream("Write a haiku about the sea."):
        print(piece, end="")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

from gpt2_lightning.backends import ExecutionPlan, generation_plan
from gpt2_lightning.data.prompts import PromptStyle, get_style
from gpt2_lightning.data.records import chat_prompt
from gpt2_lightning.errors import DataError
from gpt2_lightning.export.load import load_model
from gpt2_lightning.generation.engine import BatchEngine
from gpt2_lightning.generation.placement import placed_for_generation
from gpt2_lightning.generation.prefix_cache import DEFAULT_MEGABYTES
from gpt2_lightning.generation.respond import answer_batch
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.generation.stream import TextStream, stream_answer
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import encode

Prompt = str | Sequence[Mapping[str, str]]


class ChatModel:
    """A model ready to answer: on its plan's device and dtype, prompted in its style. A prompt
    is an instruction (``str``) or a conversation (``[{"role": ..., "content": ...}]`` ending
    with the user's turn); settings are a ``SamplingParams``, or its fields by name."""

    def __init__(self, model: GPTModel, style: str | PromptStyle, plan: ExecutionPlan | None = None,
                 max_batch_size: int = 8, params: SamplingParams = SamplingParams()):
        self.plan = plan or generation_plan("auto", "auto", model.cfg.emb_dim)
        self.model = placed_for_generation(model, self.plan)
        self.style = get_style(style)
        self.params = params
        self.max_batch_size = max_batch_size
        self._engine: BatchEngine | None = None

    @classmethod
    def load(cls, spec: str | os.PathLike, device: str = "auto", dtype: str = "auto", style: str | None = None,
             **kwargs) -> ChatModel:
        """The model of ``spec`` (a run directory, export folder, ``.ckpt`` or GPT-2 weights), in
        the prompt style it was trained with unless ``style`` says otherwise."""
        model, meta = load_model(spec)
        plan = generation_plan(device, dtype, model.cfg.emb_dim)
        return cls(model, style or meta["prompt_style"], plan, **kwargs)

    def generate(self, prompt: str | Sequence[str], params: SamplingParams | None = None, **settings
                 ) -> str | list[str]:
        """The answer to an instruction, or to each of several (decoded together)."""
        params = self._params(params, settings)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        records = [{"instruction": text, "input": ""} for text in prompts]
        answers = answer_batch(self.model, records, self.style, params, self.max_batch_size,
                               params.generator(self.plan.device))
        return answers[0] if isinstance(prompt, str) else answers

    def chat(self, messages: Prompt, params: SamplingParams | None = None, **settings) -> str:
        """The answer to a conversation (or an instruction), whole."""
        return "".join(self.stream(messages, params, **settings)).strip()

    def stream(self, prompt: Prompt, params: SamplingParams | None = None, **settings) -> Iterator[str]:
        """The answer in pieces as its tokens arrive; leaving early stops the generation."""
        params = self._params(params, settings)
        context = self.model.cfg.context_length
        ids = encode(self._render(prompt))[-max(1, context - min(params.max_new_tokens, context // 2)):]
        answer = TextStream(ids, [*self.style.stop_strings, *params.stop])
        yield from stream_answer(self._batch_engine(), answer, params, params.generator(self.plan.device))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> ChatModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _params(self, params: SamplingParams | None, settings: dict) -> SamplingParams:
        return (params or self.params).with_(**settings) if settings else (params or self.params)

    def _render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return self.style.prompt({"instruction": prompt, "input": ""})
        try:
            return chat_prompt(prompt, self.style)
        except DataError as err:
            raise ValueError(str(err)) from None

    def _batch_engine(self) -> BatchEngine:
        if self._engine is None:
            self._engine = BatchEngine(self.model, max_batch_size=self.max_batch_size, prefix_cache_mb=DEFAULT_MEGABYTES)
        return self._engine
