"""LoRA: adapters beside the hand-written GPT-2, trained by the real Trainer, checkpointed
alone, merged for every use, and exported for peft."""

from __future__ import annotations

import copy
import hashlib

import lightning as L
import pytest
import safetensors.torch
import torch

from gpt2_lightning.apps.job import run
from gpt2_lightning.errors import CheckpointMismatchError, ConfigError
from gpt2_lightning.export.load import load_model
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.lora import LoRAConfig, LoRALinear, adapter_state_dict, add_lora, merge_lora
from gpt2_lightning.model.pretrained import load_pretrained, to_hf_state_dict
from tests.conftest import TINY_RUN, compose_train

IDX = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))


def lora_run(base, *overrides):
    return (*TINY_RUN, "adapter=lora", "adapter.r=4", "model.pretrained=true", f"model.weights={base}", *overrides)


def logits(model: GPTModel) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDX)


@pytest.fixture
def base_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_layers=2, n_heads=4)).eval()


def test_an_adapted_model_starts_exactly_at_its_base(base_model):
    adapted = add_lora(copy.deepcopy(base_model), LoRAConfig(r=4))
    assert torch.equal(logits(adapted), logits(base_model))
    assert sum(isinstance(m, LoRALinear) for m in adapted.modules()) == 2 * 4


def test_merged_logits_equal_the_adapted_models(base_model):
    adapted = add_lora(base_model, LoRAConfig(r=4, alpha=8, targets=("qkv", "fc")))
    with torch.no_grad():
        for _name, tensor in adapter_state_dict(adapted).items():
            tensor.normal_(std=0.05)
    unmerged = logits(adapted)
    merged = merge_lora(adapted)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(GPTModel(merged.cfg).state_dict())
    torch.testing.assert_close(logits(merged), unmerged, atol=1e-5, rtol=0)


def test_only_the_adapters_train_and_have_optimizer_state(tiny_base, tmp_path):
    class Snapshot(L.Callback):
        def on_train_start(self, trainer, module):
            self.before = {k: v.clone() for k, v in module.model.state_dict().items()}

        def on_train_end(self, trainer, module):
            self.after = {k: v.clone() for k, v in module.model.state_dict().items()}
            self.state = list(trainer.optimizers[0].state)
            self.with_grad = [n for n, p in module.model.named_parameters() if p.grad is not None]
            self.adapters = [p for n, p in module.model.named_parameters() if "lora_" in n]

    snapshot = Snapshot()
    run(compose_train(tmp_path, *lora_run(tiny_base, "trainer.max_steps=2")), extra_callbacks=[snapshot])
    changed = {k for k in snapshot.before if not torch.equal(snapshot.before[k], snapshot.after[k])}
    adapters = {k for k in snapshot.before if "lora_" in k}
    assert len(adapters) == 2 * 4 * 2 and changed and changed <= adapters
    assert {k for k in adapters if k.endswith("lora_b")} <= changed
    assert len(snapshot.state) == len(adapters) and all(any(p is q for q in snapshot.adapters) for p in snapshot.state)
    assert all("lora_" in name for name in snapshot.with_grad)


def test_a_lora_checkpoint_holds_the_adapters_and_the_bases_identity(tiny_base, tmp_path):
    run(compose_train(tmp_path, *lora_run(tiny_base, "trainer.max_steps=2")))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.endswith(("lora_a", "lora_b")) for k in checkpoint["state_dict"]) and len(checkpoint["state_dict"]) == 16
    base = checkpoint["hyper_parameters"]["base"]
    weights = tiny_base / "model.safetensors"
    assert base["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and base["path"] == str(weights)
    assert checkpoint["hyper_parameters"]["adapter"] == {"r": 4, "alpha": 16, "dropout": 0.0,
                                                        "targets": ["qkv", "out_proj", "fc", "proj"]}
    # The checkpoint alone gives the merged model: the base, with the adapters folded in.
    merged, meta = load_model(tmp_path / "checkpoints" / "last.ckpt")
    exported, _ = load_model(tmp_path)  # the run's export, written after training
    torch.testing.assert_close(logits(merged), logits(exported), atol=1e-5, rtol=0)
    assert not torch.equal(logits(merged), logits(load_pretrained(tiny_base)))


def test_resuming_on_other_base_weights_is_one_clear_error(tiny_base, tmp_path):
    run(compose_train(tmp_path / "a", *lora_run(tiny_base, "trainer.max_steps=2")))
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        (other / name).write_bytes((tiny_base / name).read_bytes())
    model = load_pretrained(other)
    with torch.no_grad():
        model.final_norm.bias.add_(0.1)
    safetensors.torch.save_file(to_hf_state_dict(model), other / "model.safetensors")
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointMismatchError, match=r"trained on the base weights .*tiny-base.* but this run loads "
                                                      r".*other .*resume with the same model.weights"):
        run(compose_train(tmp_path / "a", *lora_run(other, "trainer.max_steps=4", f"ckpt_path={last}")))


def test_resuming_a_lora_checkpoint_as_a_full_fine_tune_is_refused(tiny_base, tmp_path):
    run(compose_train(tmp_path, *lora_run(tiny_base, "trainer.max_steps=2")))
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointMismatchError, match="holds LoRA adapters but this run is a full fine-tune"):
        run(compose_train(tmp_path, *TINY_RUN, "trainer.max_steps=4", f"ckpt_path={last}"))


def test_lora_needs_pretrained_weights_and_valid_settings(tmp_path):
    with pytest.raises(ConfigError, match="adapter=lora adapts pretrained weights"):
        run(compose_train(tmp_path, *TINY_RUN, "adapter=lora"))
    with pytest.raises(ConfigError, match=r"adapter.targets \['wte'\]: choose among qkv, out_proj, fc, proj"):
        run(compose_train(tmp_path, *TINY_RUN, "adapter=lora", "adapter.targets=[wte]"))


def test_peft_loads_the_adapter_export_onto_the_bases_hf_export(tiny_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gpt2_lightning.export.formats import export_to

    run(compose_train(tmp_path / "run", *lora_run(tiny_base, "trainer.max_steps=3", "optimizer.lr=0.01")))
    adapter = export_to(tmp_path / "run", "hf", tmp_path / "adapter", adapter_only=True)
    base_hf = export_to(tiny_base, "hf", tmp_path / "base-hf")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_hf), adapter).eval()
    merged, _ = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(IDX).logits, logits(merged), atol=1e-4, rtol=0)
        with peft_model.disable_adapter():  # the adapters matter: without them, the base's logits
            assert not torch.allclose(peft_model(IDX).logits, logits(merged), atol=1e-3)


@pytest.mark.slow
def test_chat_answers_from_a_lora_run_and_its_checkpoint_alike(tiny_base, tmp_path):
    from tests.test_command import gpt2

    trained = gpt2("train", *lora_run(tiny_base, "trainer.max_steps=3"), "hydra.run.dir=run", cwd=tmp_path, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "trainable, LoRA adapters" in (tmp_path / "run" / "train.log").read_text()
    answers = [gpt2("chat", str(spec), "--prompt", "Name a color.", "--max-new-tokens", "8", "--temperature", "0",
                    "--dtype", "float32", cwd=tmp_path)
               for spec in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt")]
    assert [a.returncode for a in answers] == [0, 0], answers[1].stderr[-2000:]
    assert answers[0].stdout == answers[1].stdout and answers[0].stdout.strip()
