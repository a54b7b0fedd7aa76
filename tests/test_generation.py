import copy

import pytest
import torch

from gpt2_lightning.generation.sampling import SamplingParams, adjusted_logits, generate, sample_next, stream_tokens
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.pretrained import convert_hf_state_dict, load_state_dict_checked
from tests.hf_reference import hf_gpt2

TINY = GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def pair():
    hf_model = hf_gpt2(TINY, seed=7)
    model = GPTModel(TINY).eval()
    load_state_dict_checked(model, convert_hf_state_dict(hf_model.state_dict()))
    return model, hf_model


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_output_equals_hugging_face_generate(pair, use_cache):
    model, hf_model = pair
    idx = torch.randint(0, 50000, (1, 12), generator=torch.Generator().manual_seed(3))
    ours = generate(model, idx, max_new_tokens=40, eos_id=None, use_cache=use_cache)
    theirs = hf_model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=40, do_sample=False,
                               pad_token_id=50256, eos_token_id=None)
    assert ours.tolist() == theirs.tolist()


def test_cached_and_uncached_sampling_agree_with_the_same_seed(pair):
    model, _ = pair
    idx = torch.randint(0, 50000, (2, 5), generator=torch.Generator().manual_seed(4))
    runs = [generate(model, idx, 30, temperature=0.9, top_k=50, top_p=0.95, eos_id=None, use_cache=cache,
                     generator=torch.Generator().manual_seed(11)) for cache in (True, False, True)]
    assert runs[0].tolist() == runs[1].tolist() == runs[2].tolist()
    other = generate(model, idx, 30, temperature=0.9, eos_id=None, generator=torch.Generator().manual_seed(12))
    assert other.tolist() != runs[0].tolist()


def test_stops_at_end_of_text_and_respects_the_context_length(pair):
    model, _ = pair
    idx = torch.randint(0, 50000, (1, 6), generator=torch.Generator().manual_seed(5))
    full = generate(model, idx, 20, eos_id=None)
    stop_token = int(full[0, 9])  # pretend this token is <|endoftext|>
    first = 6 + full[0, 6:].tolist().index(stop_token)
    stopped = generate(model, idx, 20, eos_id=stop_token)
    assert stopped.tolist() == full[:, :first].tolist()  # like the reference: eos not appended
    long = torch.zeros(1, TINY.context_length - 3, dtype=torch.long)
    assert generate(model, long, 50, eos_id=None).shape[1] == TINY.context_length


def test_finished_rows_of_a_batch_are_filled_with_end_of_text(pair):
    model, _ = pair
    idx = torch.randint(0, 50000, (2, 6), generator=torch.Generator().manual_seed(6))
    free = generate(model, idx, 10, eos_id=None)
    eos = int(free[0, 8])
    first = free[0, 6:].tolist().index(eos)
    out = generate(model, idx, 10, eos_id=eos)
    row0 = out[0, 6:].tolist()
    assert row0[:first + 1] == free[0, 6:7 + first].tolist() and set(row0[first:]) == {eos}


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = torch.tensor([[5.0, 4.0, 3.0, -10.0, -10.0]]).repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    sampled = SamplingParams(temperature=1.0)
    assert set(sample_next(logits, sampled.with_(top_k=2), gen).flatten().tolist()) == {0, 1}
    # p(0) = 0.66, p(1) = 0.24: top_p=0.8 keeps tokens 0 and 1 only.
    assert set(sample_next(logits, sampled.with_(top_p=0.8), gen).flatten().tolist()) == {0, 1}
    assert set(sample_next(logits, sampled.with_(top_p=0.5), gen).flatten().tolist()) == {0}
    assert set(sample_next(logits, sampled.with_(top_p=5e-324), gen).flatten().tolist()) == {0}  # 0 in float32
    assert sample_next(logits[:1], SamplingParams()).tolist() == [[0]]


def test_sampling_params_refuse_settings_out_of_range():
    for bad in (dict(max_new_tokens=0), dict(temperature=-1), dict(top_k=0), dict(top_p=1.5)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
            SamplingParams(**bad)
    assert SamplingParams(stop=["a"]).stop == ("a",) and SamplingParams().generator("cpu") is None
    seeded = SamplingParams(temperature=1.0, seed=3)
    assert torch.equal(torch.rand(4, generator=seeded.generator("cpu", 1)),
                       torch.rand(4, generator=torch.Generator().manual_seed(4)))


def test_a_temperature_near_zero_samples_the_most_likely_token():
    logits = torch.randn(3, 50257, generator=torch.Generator().manual_seed(0))
    picked = sample_next(logits, SamplingParams(temperature=1.6e-218), torch.Generator().manual_seed(1))
    assert picked.squeeze(1).tolist() == logits.argmax(dim=-1).tolist()


def test_penalties_and_biases_reshape_the_logits_as_openai_and_transformers_define_them():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 1.0]])
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    # token 3 twice, token 2 once in the answer: presence once each, frequency per time
    assert adjusted_logits(logits, params, [0], [3, 2, 3], eos_id=4).tolist() == [[2.0, -1.0, -0.25, 2.0, 1.0]]
    repetition = SamplingParams(repetition_penalty=2.0)
    assert adjusted_logits(logits, repetition, [0, 1], [3], eos_id=4).tolist() == [[1.0, -2.0, 0.5, 1.5, 1.0]]
    biased = SamplingParams(logit_bias={2: -100.0}, min_new_tokens=2)
    assert adjusted_logits(logits, biased, [0], [1], eos_id=4).tolist() == [[2.0, -1.0, -99.5, 3.0, float("-inf")]]
    assert adjusted_logits(logits, biased, [0], [1, 1], eos_id=4)[0, 4] == 1.0
    assert not SamplingParams().reshapes_logits and biased.reshapes_logits


def test_stream_yields_one_token_at_a_time(pair):
    model, _ = pair
    idx = torch.randint(0, 50000, (1, 4), generator=torch.Generator().manual_seed(8))
    steps = list(stream_tokens(model, idx, SamplingParams(7), eos_id=None))
    assert len(steps) == 7 and all(s.shape == (1, 1) for s in steps)
    assert torch.cat([idx, *steps], 1).tolist() == generate(model, idx, 7, eos_id=None).tolist()


def test_onednn_linears_generate_the_same_tokens_and_keep_the_state_dict(pair):
    from gpt2_lightning.backends.cpu.onednn import OneDNNLinear, use_onednn_linears

    ours, _ = pair
    onednn = use_onednn_linears(copy.deepcopy(ours).eval())
    assert sum(isinstance(m, OneDNNLinear) for m in onednn.modules()) == 4 * TINY.n_layers + 1
    assert onednn.out_head.weight is onednn.tok_emb.weight  # still tied
    assert onednn.state_dict().keys() == ours.state_dict().keys()
    idx = torch.randint(0, TINY.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(onednn(idx), ours(idx), atol=1e-4, rtol=1e-4)
        assert torch.equal(generate(onednn, idx, 12, eos_id=None), generate(ours, idx, 12, eos_id=None))


def test_this_torch_has_the_onednn_op_and_the_layer_falls_back_off_its_path():
    # A torch release without the private op fails here; the plan then keeps F.linear.
    from gpt2_lightning.backends.cpu.onednn import OneDNNLinear, onednn_available

    assert onednn_available()
    layer = OneDNNLinear(torch.nn.Linear(8, 3))
    assert layer(torch.empty(0, 8)).shape == (0, 3)  # empty input: F.linear


@pytest.mark.parametrize("gradients", ["onednn", "torch"])
def test_onednn_linear_gives_the_outputs_and_gradients_of_nn_linear(gradients):
    from gpt2_lightning.backends.cpu.onednn import OneDNNLinear

    torch.manual_seed(0)
    plain = torch.nn.Linear(96, 200)
    onednn = OneDNNLinear(copy.deepcopy(plain), gradients)
    for x in (torch.randn(3, 7, 96), torch.randn(96, 50).t()):  # batched; rows with strides
        grad = torch.randn(*x.shape[:-1], 200)
        results = []
        for layer in (plain, onednn):
            layer.zero_grad(set_to_none=True)
            x_ = x.clone().requires_grad_()
            out = layer(x_)
            out.backward(grad)
            results.append((out, x_.grad, layer.weight.grad, layer.bias.grad))
        for theirs, ours in zip(*results):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    onednn.zero_grad(set_to_none=True)
    onednn.weight.requires_grad_(False)  # frozen (LoRA's base): no gradient made for it
    onednn(torch.randn(4, 96, requires_grad=True)).sum().backward()
    assert onednn.weight.grad is None and onednn.bias.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own bf16 product
        assert onednn(torch.randn(4, 96)).dtype == torch.bfloat16
    assert onednn.to(torch.bfloat16)(torch.randn(4, 96, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_inference_in_fp32_on_cpu_uses_onednn_where_it_measures_faster(tmp_path, monkeypatch):
    import json

    from gpt2_lightning.backends.cpu.onednn import OneDNNLinear
    from gpt2_lightning.generation.placement import placed_for_generation

    monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(tmp_path))
    model = placed_for_generation(GPTModel(TINY), device="cpu", dtype="float32")
    [entry] = [v for k, v in json.loads((tmp_path / "calibration.json").read_text()).items()
               if k.endswith("| generate | width 32 | float32 vs onednn")]
    assert set(entry["seconds"]) == {"float32", "onednn"} and not entry["screen"]  # each kernel's whole workload
    assert isinstance(model.blocks[0].att.qkv, OneDNNLinear) == (entry["fastest"] == "onednn")
    bf16 = placed_for_generation(GPTModel(TINY), device="cpu", dtype="bfloat16")
    assert not any(isinstance(m, OneDNNLinear) for m in bf16.modules())


def test_a_repetition_penalty_near_zero_keeps_the_logits_finite_and_samples_a_seen_token():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    params = SamplingParams(temperature=1.0, repetition_penalty=5e-324)
    adjusted = adjusted_logits(logits.clone(), params, prompt_ids=[0, 2], answer_ids=[])
    assert torch.isfinite(adjusted).all() and adjusted[0, 0] == torch.finfo(torch.float32).max
    assert sample_next(adjusted, params, torch.Generator().manual_seed(0)).item() == 0
