import hashlib

import pytest
import torch

from gpt2_lightning.errors import CheckpointMismatchError, DownloadError
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.pretrained import (
    convert_hf_state_dict,
    hub_url,
    load_pretrained,
    load_state_dict_checked,
    read_safetensors,
    resolve_weights,
)
from tests.hf_reference import hf_gpt2
from tests.http_server import FileServer

TINY = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random GPT2LMHeadModel saved the way the hub serves GPT-2 (safetensors)."""
    folder = tmp_path_factory.mktemp("hf-tiny")
    model = hf_gpt2(TINY, seed=3)
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


def assert_same_logits(model: GPTModel, hf_model) -> None:
    idx = torch.randint(0, TINY.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx), hf_model(idx).logits, atol=1e-4, rtol=0)


def test_downloads_over_http_converts_and_matches_hugging_face(hf_folder, tmp_path):
    folder, hf_model = hf_folder
    body = (folder / "model.safetensors").read_bytes()
    with FileServer({"/tiny/model.safetensors": body}) as server:
        url = f"{server.url}/tiny/model.safetensors"
        model = load_pretrained(url, cache_dir=tmp_path, n_heads=4, progress=False,
                                sha256=hashlib.sha256(body).hexdigest())
        assert model.cfg == TINY
        assert_same_logits(model, hf_model)
        # Second load comes from the cache: no new request.
        load_pretrained(url, cache_dir=tmp_path, n_heads=4, progress=False)
        assert len(server.faults.requests) == 1


def test_loads_a_local_folder_reading_heads_from_its_config(hf_folder):
    folder, hf_model = hf_folder
    model = load_pretrained(folder, drop_rate=0.1)
    assert (model.cfg.n_heads, model.cfg.drop_rate) == (4, 0.1)
    assert_same_logits(model, hf_model)


def test_keys_without_transformer_prefix_and_mask_buffers_convert(hf_folder):
    _, hf_model = hf_folder
    # The layout of OpenAI's original upload: no prefix, no lm_head, causal-mask buffers.
    raw = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    raw["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    model = GPTModel(TINY)
    load_state_dict_checked(model, convert_hf_state_dict(raw))
    assert_same_logits(model, hf_model)


def test_unknown_tensor_is_named():
    with pytest.raises(CheckpointMismatchError, match="unexpected tensor 'h.0.attn.rotary.weight'"):
        convert_hf_state_dict({"wte.weight": torch.zeros(3, 2), "h.0.attn.rotary.weight": torch.zeros(1)})


def test_wrong_model_size_names_tensor_and_shapes(hf_folder):
    folder, _ = hf_folder
    state = convert_hf_state_dict(read_safetensors(folder / "model.safetensors"))
    bigger = GPTModel(GPTConfig(**{**TINY.to_dict(), "emb_dim": 48}))
    with pytest.raises(CheckpointMismatchError,
                       match=r"'tok_emb.weight' has shape \(50257, 32\) but the model expects \(50257, 48\)"):
        load_state_dict_checked(bigger, state, source="tiny.safetensors")
    deeper = GPTModel(GPTConfig(**{**TINY.to_dict(), "n_layers": 3}))
    with pytest.raises(CheckpointMismatchError, match=r"missing \['blocks.2.att.out_proj.bias'"):
        load_state_dict_checked(deeper, state)


def test_not_a_safetensors_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"definitely not safetensors")
    with pytest.raises(CheckpointMismatchError, match=f"{bad} is not a readable safetensors file"):
        load_pretrained(bad)


def test_missing_weights_and_404_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file, a folder, a URL nor a GPT-2 size"):
        resolve_weights(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        resolve_weights(tmp_path)
    with FileServer({}) as server:
        with pytest.raises(DownloadError, match=f"{server.url}/gone.safetensors: HTTP 404"):
            resolve_weights(f"{server.url}/gone.safetensors", cache_dir=tmp_path, progress=False)


def test_hub_urls_of_the_four_sizes():
    assert hub_url("gpt2-small") == hub_url("gpt2") == \
        "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors"
    assert hub_url("gpt2-xl").endswith("/openai-community/gpt2-xl/resolve/main/model.safetensors")


def test_a_model_takes_the_loaded_tensors_themselves_without_a_random_init():
    from gpt2_lightning.model.pretrained import model_with_weights

    cfg = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_layers=1, n_heads=2)
    state = {k: torch.randn_like(v) for k, v in GPTModel(cfg).state_dict().items()}
    state["out_head.weight"] = state["tok_emb.weight"]
    model = model_with_weights(cfg, state, "test")
    assert all(p.data_ptr() == state[name].data_ptr() for name, p in model.named_parameters())
    assert model.out_head.weight is model.tok_emb.weight  # still tied, one parameter
    assert len(list(model.parameters())) == len(state) - 1
