import pytest
import torch
from omegaconf import OmegaConf

from gpt2_lightning.backends.cpu.attention import matmul_attention
from gpt2_lightning.model.gpt import GPT2_PRESETS, GPTConfig, GPTModel, KeptPositions, _attention_mask
from gpt2_lightning.model.pretrained import convert_hf_state_dict, load_state_dict_checked
from tests.conftest import REPO_ROOT
from tests.hf_reference import hf_gpt2

TINY = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_layers=2, n_heads=4)


def ours_from_hf(cfg: GPTConfig, hf_model) -> GPTModel:
    model = GPTModel(cfg).eval()
    load_state_dict_checked(model, convert_hf_state_dict(hf_model.state_dict()))
    return model


@pytest.mark.parametrize("cfg", [TINY, GPTConfig.from_name("gpt2-small")], ids=["tiny", "gpt2-small"])
def test_logits_match_hugging_face_gpt2(cfg):
    hf_model = hf_gpt2(cfg)
    model = ours_from_hf(cfg, hf_model)
    idx = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx), hf_model(idx).logits
    assert ours.shape == (2, 48, cfg.vocab_size)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, expected", [
    ("gpt2-small", 124_439_808), ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_parameter_counts_match_published_sizes(name, expected):
    with torch.device("meta"):
        model = GPTModel(GPTConfig.from_name(name))
    assert model.num_parameters() == expected
    assert model.out_head.weight is model.tok_emb.weight


def test_untied_head_adds_its_own_matrix():
    tied = GPTModel(TINY).num_parameters()
    untied = GPTModel(GPTConfig(**{**TINY.to_dict(), "tie_weights": False})).num_parameters()
    assert untied - tied == TINY.vocab_size * TINY.emb_dim


def test_kv_cache_reproduces_full_forward():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (3, 20))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(batch_size=3)
        chunks = [model(idx[:, :7], cache), model(idx[:, 7:12], cache)]
        chunks += [model(idx[:, t:t + 1], cache) for t in range(12, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("queries, keys, padded", [(9, 9, False), (9, 9, True), (1, 9, True), (4, 13, True)],
                         ids=["causal", "left-padded prompt", "one decoded token", "chunk after cache"])
def test_matmul_attention_equals_sdpa(queries, keys, padded):
    torch.manual_seed(0)
    q = torch.randn(2, 4, queries, 8)
    k, v = torch.randn(2, 4, keys, 8), torch.randn(2, 4, keys, 8)
    pad_lengths = torch.tensor([0, 3]) if padded else None
    mask = _attention_mask(keys - queries, queries, pad_lengths, q.device)
    causal = mask is None and queries == keys
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(matmul_attention(q, k, v, mask, causal), expected, atol=1e-5, rtol=0)


def fp32_then_bf16(batch: int, seq: int) -> tuple[GPTModel, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tiny model, random tokens, and its logits for them in fp32 and then in bf16 (the model
    left in bf16)."""
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (batch, seq))
    with torch.no_grad():
        full32 = model(idx)
        model.to(torch.bfloat16)
        return model, idx, full32, model(idx)


def test_short_sequence_attention_takes_the_matmuls_only_in_its_dtype_and_up_to_its_length():
    from gpt2_lightning.backends.cpu.attention import short_sequence_attention

    torch.manual_seed(0)
    for tokens, dtype, path in [(16, torch.bfloat16, "matmul"), (17, torch.bfloat16, "sdpa"),
                                (16, torch.float32, "sdpa")]:
        q, k, v = torch.randn(3, 2, 4, tokens, 8).to(dtype)
        out = short_sequence_attention(q, k, v, None, True, dtype=torch.bfloat16, max_tokens=16)
        matmuls = matmul_attention(q, k, v, None, True)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert not torch.equal(matmuls, sdpa)  # the two paths tell apart
        assert torch.equal(out, matmuls if path == "matmul" else sdpa), (tokens, dtype)


def test_bf16_model_on_cpu_matches_fp32_and_its_own_cache():
    """bf16 on CPU agrees with the fp32 model (to bf16 precision) and decodes through the cache
    like a full forward."""
    model, idx, full32, full16 = fp32_then_bf16(2, 24)
    with torch.no_grad():
        cache = model.new_cache(batch_size=2)
        steps = [model(idx[:, :16], cache)] + [model(idx[:, t:t + 1], cache) for t in range(16, 24)]
    assert full16.dtype == torch.bfloat16
    torch.testing.assert_close(full16.float(), full32, atol=0.05, rtol=0.02)
    torch.testing.assert_close(torch.cat(steps, dim=1).float(), full16.float(), atol=0.05, rtol=0.02)
    assert (full16.argmax(-1) == full32.argmax(-1)).float().mean() > 0.95


def test_exact_gelu_in_bf16_is_within_bf16s_own_rounding_of_gpt2s_tanh_gelu():
    """The CPU backend's ``erf`` GELU form: a bf16 model with it is as close to the fp32 model
    (GPT-2's tanh GELU) as the bf16 model with the tanh GELU; and the reference comes back."""
    model, idx, reference, tanh = fp32_then_bf16(4, 48)
    tanh = tanh.float()
    with torch.no_grad():
        erf = model.use_kernels(gelu_fn=torch.nn.functional.gelu)(idx).float()
        back = model.use_kernels()(idx).float()
    assert not torch.equal(erf, tanh) and torch.equal(back, tanh)
    tanh_error, erf_error = ((out - reference).abs().mean().item() for out in (tanh, erf))
    assert erf_error < 1.25 * tanh_error


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_prefixes_are_computed_as_in_the_full_batch(dtype):
    """Right-padded rows: only each row's prefix is computed, and equals the full forward there."""
    torch.manual_seed(0)
    model = GPTModel(TINY).eval().to(dtype)
    idx = torch.randint(0, TINY.vocab_size, (3, 12))
    keep = torch.arange(12) < torch.tensor([[12], [5], [0]])
    kept = KeptPositions(keep.flatten().nonzero().squeeze(1), 3, 12)
    with torch.no_grad():
        packed, full = model.hidden_states(idx, kept=kept), model.hidden_states(idx)
    assert packed.shape == (12 + 5, TINY.emb_dim)
    torch.testing.assert_close(packed, full[keep], atol=1e-5 if dtype == torch.float32 else 0.02, rtol=0)
    with pytest.raises(ValueError, match="kept positions and a KV cache"):
        model.hidden_states(idx, model.new_cache(3), kept=kept)


def test_too_long_input_is_a_clear_error():
    model = GPTModel(TINY)
    with pytest.raises(ValueError, match="65 tokens exceeds the context length of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = model.new_cache(batch_size=1, max_length=10)
    model(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"8 cached \+ 3 new.*KV cache size of 10"):
        model(torch.zeros(1, 3, dtype=torch.long), cache)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(1, 4), "must be integers"),
    (torch.zeros(1, 4, dtype=torch.bool), "must be integers"),
    (torch.zeros(4, dtype=torch.long), r"shape \[batch, seq_len\]"),
    ([[1, 2, 3]], "expects a LongTensor"),
])
def test_bad_token_ids_are_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTModel(TINY)(bad)


def test_int32_ids_are_accepted():
    model = GPTModel(TINY).eval()
    idx = torch.randint(0, 100, (1, 5))
    torch.testing.assert_close(model(idx.int()), model(idx))


@pytest.mark.parametrize("fields, message", [
    (dict(emb_dim=30, n_heads=4), "n_heads=4 must divide emb_dim=30"),
    (dict(n_layers=0), "n_layers must be a positive integer"),
    (dict(drop_rate=1.5), "drop_rate"),
    (dict(heads=4), "unknown GPTConfig field"),
])
def test_bad_config_is_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_dict({**TINY.to_dict(), **fields})


def test_from_name_rejects_unknown_sizes_and_accepts_aliases():
    assert GPTConfig.from_name("gpt2") == GPTConfig.from_name("gpt2-small") == GPTConfig()
    with pytest.raises(ValueError, match="unknown GPT-2 size 'gpt2-huge'"):
        GPTConfig.from_name("gpt2-huge")


@pytest.mark.parametrize("name", ["tiny", *GPT2_PRESETS])
def test_model_configs_build(name):
    node = OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{name}.yaml")
    cfg = GPTConfig.from_spec(node.name, OmegaConf.to_container(node.config))
    assert cfg.vocab_size == 50257
    if name in GPT2_PRESETS:
        assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads) == tuple(GPT2_PRESETS[name].values())
        assert node.pretrained is True


def test_wrong_size_checkpoint_names_the_tensor():
    small = GPTModel(GPTConfig(**{**TINY.to_dict(), "emb_dim": 64})).state_dict()
    with pytest.raises(ValueError, match=r"'tok_emb.weight' has shape \(50257, 64\).*\(50257, 32\)"):
        load_state_dict_checked(GPTModel(TINY), small)
