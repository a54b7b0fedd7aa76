"""The model card (``README.md``) of an exported model: what it was trained from and on,
how, how well it scored, and the prompt format it expects."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from gpt2_lightning.backends import ExecutionPlan
from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.export.run import Run
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.pretrained import HUB_REPOS

# Settings shown in the card's training table: (label, config key).
HYPERPARAMETERS = (
    ("learning rate", "optimizer.lr"), ("weight decay", "optimizer.weight_decay"),
    ("schedule", "optimizer.schedule"), ("warmup steps", "optimizer.warmup_steps"),
    ("batch size", "data.batch_size"), ("gradient accumulation", "trainer.accumulate_grad_batches"),
    ("epochs", "trainer.max_epochs"), ("max steps", "trainer.max_steps"), ("precision", "trainer.precision"),
    ("dropout", "model.config.drop_rate"), ("prompt loss masked", "data.mask_prompt"), ("seed", "seed"),
)


@dataclass
class RunSummary:
    """What a training run left about itself: its settings and its scores."""

    config: DictConfig = field(default_factory=lambda: OmegaConf.create({}))
    scores: dict[str, Any] = field(default_factory=dict)
    plan: ExecutionPlan | None = None
    """How it trained (the precision ``auto`` chose)."""
    name: str | None = None
    """The run's name (its experiment and model)."""

    def get(self, key: str) -> Any:
        """The resolved setting ``key`` (dotted), or None where it is missing or only the
        training job could resolve it (its output folder)."""
        value = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def read_run_summary(spec: str | os.PathLike) -> RunSummary:
    """The settings and scores of the run ``spec`` belongs to; empty for plain weights."""
    run = Run.of(spec)
    return RunSummary() if run is None else RunSummary(run.config, run.read_scores(), run.execution_plan(), run.name)


def base_model(summary: RunSummary) -> str | None:
    """The Hugging Face repository of the public GPT-2 the run started from, if it did."""
    if not summary.get("model.pretrained") or summary.get("model.weights"):
        return None
    repo = HUB_REPOS.get(str(summary.get("model.name")))
    return f"openai-community/{repo}" if repo else None


def model_card(model: GPTModel, style: PromptStyle, summary: RunSummary, name: str) -> str:
    cfg = model.cfg
    base = base_model(summary)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    adapter = summary.get("adapter") or {}
    lora = adapter.get("name") == "lora"
    dpo = summary.get("dpo")
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             f"tags: [gpt2, instruction-tuning, gpt2-lightning{', lora' if lora else ''}{', dpo' if dpo else ''}]"]
    lines += [f"base_model: {base}"] if base else []
    lines += ["---", "", f"# {summary.name or name}", "",
              f"A GPT-2 ({cfg.n_layers} layers, width {cfg.emb_dim}, {cfg.n_heads} heads, context "
              f"{cfg.context_length} tokens, {params:.1f}M parameters) fine-tuned to follow instructions "
              f"with gpt2-lightning.", ""]
    lines += ["## Base model", "",
              f"[{base}](https://huggingface.co/{base})" if base else
              "Trained from random initialisation or from weights given by path (no public base).", ""]
    if lora:
        lines += ["## Fine-tuning method", "",
                  f"LoRA: low-rank adapters (r={adapter.get('r')}, alpha={adapter.get('alpha')}, on "
                  f"{', '.join(adapter.get('targets', []))}) trained on the frozen base, then merged into "
                  f"these weights (`W + B A alpha / r`).", ""]
    if dpo:
        lines += ["## Preference tuning", "",
                  f"Tuned from `{summary.get('model.weights')}` to prefer each record's chosen answer to its rejected one: "
                  f"{dpo.get('loss_type')} loss, beta {dpo.get('beta')}, "
                  f"{'mean' if dpo.get('average_logprobs') else 'summed'} log-probabilities of the answers.", ""]
    data = summary.get("data.path") or summary.get("data.url")
    if data:
        split = summary.get("data.split")
        lines += ["## Data", "", f"{'Preference' if dpo else 'Instruction'} records from `{data}`"
                  + (f", split train / validation / test as {split}." if split else "."), ""]
    ran = {"trainer.precision": summary.plan.precision} if summary.plan and summary.plan.precision else {}
    rows = [(label, ran.get(key, summary.get(key))) for label, key in HYPERPARAMETERS
            if ran.get(key, summary.get(key)) is not None]
    if rows:
        lines += ["## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value in rows] + [""]
    numbers = {k: v for k, v in summary.scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        lines += ["## Evaluation", "", "On the run's held-out test split:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4g} |" for key, value in numbers.items()] + [""]
    example = style.prompt({"instruction": "Name three primary colors."})
    lines += ["## Prompt format", "",
              f"Prompt style `{style.name}`; the tokenizer's chat template renders it. A prompt:", "",
              "```text", example, "```", "",
              "The answer follows and ends with `<|endoftext|>`. Cut it at any of "
              + ", ".join(f"`{json.dumps(s)[1:-1]}`" for s in style.stop_strings) + ".", ""]
    return "\n".join(lines)
