"""``gpt2 export``: checked against the real transformers, llama.cpp (llama-cpp-python) and
Go's text/template (the engine of Ollama's templates)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys

import gguf
import pytest
import torch

from gpt2_lightning.data.prompts import PROMPT_STYLES, format_prompt, get_style
from gpt2_lightning.export.folder import export_model
from gpt2_lightning.export.formats import export_to
from gpt2_lightning.export.load import load_model
from gpt2_lightning.generation.sampling import generate
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.tokenizer import EOT_ID, bpe_vocab_and_merges, encode
from tests.conftest import REPO_ROOT
from tests.scripted_model import scripted_answer
from tests.test_command import gpt2

PROMPTS = [{"instruction": "Name three primary colors."},
           {"instruction": "Translate to French.", "input": "Good morning, how are you?"},
           {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast."}]
TEXTS = ["Hello world", "  two spaces and\ttabs\n\nnewlines", "naïve café — 東京 🙂", "it's 2026's <|endoftext|> end",
         "x" * 40 + "123456789", ""]
CONVERSATION = [("What is 2+2?", "4"), ("And \"3+3\"?\n", "6 — é")]


def random_model(seed: int = 0, **overrides) -> GPTModel:
    """A tiny model with random biases and norms too, so that no mix-up hides behind zeros and ones."""
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig(**{"vocab_size": 50257, "context_length": 128, "emb_dim": 64, "n_layers": 2,
                                  "n_heads": 4, **overrides}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.normal_(mean=0.0 if name.endswith("bias") else 1.0, std=0.05)
    return model.eval()


def messages(history, instruction):
    turns = [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return [*turns, {"role": "user", "content": instruction}]


def greedy(model: GPTModel, ids: list[int], n: int) -> list[int]:
    """The project's next ``n`` greedy tokens, not stopping at ``<|endoftext|>``."""
    out = generate(model, torch.tensor([ids]), max_new_tokens=n, temperature=0.0, eos_id=None)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per style and head kind, the project's export folder of a random model."""
    made = {}
    for style in PROMPT_STYLES:
        for tied in (True, False):
            model = random_model(seed=len(made), tie_weights=tied, qkv_bias=tied)
            made[style, tied] = (model, export_model(model, tmp_path_factory.mktemp(f"{style}-{tied}"), style))
    return made


# --- the vocabulary -------------------------------------------------------------------------

def test_vocab_and_merges_derived_from_tiktoken_equal_openais_files():
    from tiktoken.load import read_file_cached

    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    encoder = json.loads(read_file_cached(base + "encoder.json"))
    merges = [tuple(line.split(" ")) for line in read_file_cached(base + "vocab.bpe").decode().splitlines()[1:] if line]
    vocab, derived = bpe_vocab_and_merges()
    assert vocab == encoder and len(vocab) == 50257
    assert derived == merges and len(derived) == 50000


# --- Hugging Face -----------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "own-head-no-qkv-bias"])
def test_transformers_loads_the_hf_export_with_equal_logits(exported, tmp_path, tied):
    from transformers import AutoModelForCausalLM

    model, folder = exported["alpaca", tied]
    out = export_to(folder, "hf", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(hf(idx).logits, model(idx), atol=1e-4, rtol=0)
    assert hf.config.tie_word_embeddings is tied


def test_hf_tokenizer_gives_tiktokens_ids_and_text_back(exported, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_to(exported["alpaca", True][1], "hf", tmp_path / "hf"))
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == encode(text), text
        assert tokenizer.decode(encode(text)) == text
    assert tokenizer.eos_token_id == EOT_ID


@pytest.mark.parametrize("style", list(PROMPT_STYLES))
def test_hf_chat_template_renders_the_prompt_style(exported, tmp_path, style):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_to(exported[style, True][1], "hf", tmp_path / "hf"))
    for record in PROMPTS[:1]:
        rendered = tokenizer.apply_chat_template(messages([], record["instruction"]), tokenize=False,
                                                 add_generation_prompt=True)
        assert rendered == format_prompt(record, style)
    with_system = [{"role": "system", "content": "Answer in one line."}, *messages(CONVERSATION, "Last one")]
    rendered = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    assert rendered == get_style(style).render(with_system)


def test_hf_generate_gives_the_projects_greedy_tokens_and_stops_at_end_of_text(tmp_path):
    from transformers import AutoModelForCausalLM

    prompt = encode(format_prompt(PROMPTS[0]))
    answer = encode(" Red, yellow and blue.")
    model = scripted_answer(prompt, answer)
    out = export_to(export_model(model, tmp_path / "own", "alpaca"), "hf", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    generated = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False)[0, len(prompt):].tolist()
    assert generated == [*answer, EOT_ID] == greedy(model, prompt, 30)[:len(answer) + 1]


def test_hf_export_loads_back_with_its_prompt_style_and_dtype(exported, tmp_path):
    model, folder = exported["phi3", False]
    out = export_to(folder, "hf", tmp_path / "hf", dtype="bfloat16")
    loaded, meta = load_model(out)
    assert meta["prompt_style"] == "phi3"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    idx = torch.randint(0, 50257, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded.float()(idx), copy.deepcopy(model).to(torch.bfloat16).float()(idx), atol=1e-4)


# --- llama.cpp ---------------------------------------------------------------------------------

def llama(path):
    """llama.cpp's model of ``path``, its weights kept as the file has them (``llama-cli
    --no-repack``): its AMX repacking of Q8_0 weights segfaults in ``ggml_backend_amx_mul_mat``
    on CPUs with AMX (ggml-org/llama.cpp#20824), a crash of llama.cpp's, not of the file's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def no_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", no_repacking)
        return llama_cpp.Llama(str(path), n_ctx=128, verbose=False, seed=0)


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if token == llm.token_eos() or len(out) == n:
            break
        out.append(token)
    return out


def test_llama_cpp_runs_the_f32_gguf_with_the_projects_greedy_tokens(exported, tmp_path):
    model, folder = exported["alpaca", False]
    out = export_to(folder, "gguf", tmp_path / "gguf")
    llm = llama(out / "model.gguf")
    for record in PROMPTS:
        prompt = format_prompt(record)
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        assert ids == encode(prompt)
        ours = greedy(model, ids, 20)
        assert llama_greedy(llm, ids, 20) == (ours[:ours.index(EOT_ID)] if EOT_ID in ours else ours)
    assert llm.metadata["tokenizer.ggml.eos_token_id"] == str(EOT_ID)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "q8_0"])
def test_llama_cpp_loads_and_answers_the_smaller_ggufs(exported, tmp_path, dtype):
    model, folder = exported["alpaca", True]
    small = export_to(folder, "gguf", tmp_path / "small", dtype=dtype) / "model.gguf"
    types = {t.name: (t.tensor_type.name, len(t.shape)) for t in gguf.GGUFReader(small).tensors}
    want = {"float16": "F16", "bfloat16": "BF16", "q8_0": "Q8_0"}[dtype]
    assert {kind for kind, dims in types.values() if dims == 2} == {want}
    assert {kind for kind, dims in types.values() if dims == 1} == {"F32"}
    assert "output.weight" not in types and len(types) == 4 + 12 * model.cfg.n_layers
    ids = encode(format_prompt(PROMPTS[0]))
    assert len(llama_greedy(llama(small), ids, 8)) == 8


def test_llama_cpp_chat_uses_the_gguf_template_and_stops_at_end_of_text(tmp_path):
    prompt = encode(format_prompt(PROMPTS[0]))
    model = scripted_answer(prompt, encode("Red, yellow and blue."))
    out = export_to(export_model(model, tmp_path / "own", "alpaca"), "gguf", tmp_path / "gguf")
    llm = llama(out / "model.gguf")
    reply = llm.create_chat_completion(messages([], PROMPTS[0]["instruction"]), max_tokens=40, temperature=0.0)
    assert reply["choices"][0]["message"]["content"] == "Red, yellow and blue."
    assert reply["choices"][0]["finish_reason"] == "stop"


# --- Ollama ------------------------------------------------------------------------------------

GO_RENDER = """package main

import ("encoding/json"; "os"; "text/template")

// Ollama executes a Modelfile TEMPLATE with text/template over .Messages (Role, Content).
type Message struct { Role string `json:"role"`; Content string `json:"content"` }

func main() {
\tsrc, _ := os.ReadFile(os.Args[1])
\tvar data struct{ Messages []Message }
\tif err := json.NewDecoder(os.Stdin).Decode(&data.Messages); err != nil { panic(err) }
\tif err := template.Must(template.New("").Parse(string(src))).Execute(os.Stdout, data); err != nil { panic(err) }
}
"""


def read_modelfile(path):
    text = path.read_text()
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    stops = [json.loads(value) for value in re.findall(r"^PARAMETER stop (.+)$", text, re.M)]
    return text, template, stops


@pytest.mark.parametrize("style", list(PROMPT_STYLES))
def test_ollama_modelfile_template_renders_the_prompt_style_in_go(exported, tmp_path, style):
    if shutil.which("go") is None:
        pytest.skip("Go is not installed")
    model, folder = exported[style, True]
    out = export_to(folder, "ollama", tmp_path / "ollama")
    text, template, stops = read_modelfile(out / "Modelfile")
    assert "FROM ./model.gguf" in text and (out / "model.gguf").is_file()
    assert f"PARAMETER num_ctx {model.cfg.context_length}" in text
    assert stops == list(get_style(style).stop_strings)
    (tmp_path / "render.go").write_text(GO_RENDER)
    (tmp_path / "template").write_text(template)
    system = [{"role": "system", "content": "Answer in one line."}]
    for conversation in (messages([], "Only one\n"), system + messages(CONVERSATION, "Last one")):
        rendered = subprocess.run(["go", "run", str(tmp_path / "render.go"), str(tmp_path / "template")],
                                  input=json.dumps(conversation), capture_output=True,
                                  text=True, timeout=300, check=True).stdout
        assert rendered == get_style(style).render(conversation)


# --- the command -------------------------------------------------------------------------------

def test_export_refuses_a_non_empty_out_folder_and_replaces_it_with_force(tiny_export, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    refused = gpt2("export", str(tiny_export), "--format", "gguf", "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "not empty" in refused.stderr and "--force" in refused.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    forced = gpt2("export", str(tiny_export), "--format", "gguf", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert [p.name for p in out.iterdir()] == ["model.gguf"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left behind


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx"], "unknown export format 'onnx'"),
    (["--format", "hf", "--dtype", "q8_0"], "--dtype q8_0 does not exist for hf"),
])
def test_export_rejects_an_unknown_format_or_dtype_in_one_line(tiny_export, tmp_path, args, message):
    result = gpt2("export", str(tiny_export), *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr == f"error: {message}" + result.stderr.split(message)[1]
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_export_of_a_run_without_weights_says_so_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    result = gpt2("export", str(run), "--format", "hf", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr == f"error: run {run} holds no weights yet: no export/ and no checkpoints/*.ckpt\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_hf_export_of_a_run_carries_a_model_card_with_its_settings_and_scores(tmp_path):
    trained = gpt2("train", "model=tiny", "data=sample", "trainer=cpu", "trainer.max_steps=2", "optimizer.lr=0.0007",
                   "generation.max_new_tokens=2", "plot=false", "callbacks.progress_bar.refresh_rate=0",
                   "hydra.run.dir=run", cwd=tmp_path, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    scores = json.loads((tmp_path / "run" / "eval.json").read_text())
    exported = gpt2("export", "run", "--format", "hf", "--out", "hf", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| learning rate | 0.0007 |" in card and "| max steps | 2 |" in card
    assert f"| rouge_l | {scores['rouge_l']:.4g} |" in card and f"| test_loss | {scores['test_loss']:.4g} |" in card
    assert format_prompt({"instruction": "Name three primary colors."}) in card


def test_a_lora_runs_model_card_says_lora_is_titled_by_the_run_and_lists_the_precision_that_ran(tmp_path, tiny_base):
    from omegaconf import OmegaConf

    from gpt2_lightning.apps.job import run
    from gpt2_lightning.backends import ExecutionPlan
    from tests.conftest import TINY_RUN, compose_train

    cfg = compose_train(tmp_path / "run", *TINY_RUN, "adapter=lora", "adapter.r=4", "model.pretrained=true",
                        f"model.weights={tiny_base}", "trainer.max_steps=1", "~callbacks.response_sample")
    run(cfg)
    (tmp_path / "run" / ".hydra").mkdir()  # what Hydra writes beside a run of train.py
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    export_to(tmp_path / "run", "hf", tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "# tiny\n" in card and "# hf\n" not in card
    assert "tags: [gpt2, instruction-tuning, gpt2-lightning, lora]" in card
    assert "LoRA: low-rank adapters (r=4, alpha=16, on qkv, out_proj, fc, proj)" in card
    ran = ExecutionPlan.load(tmp_path / "run").precision
    assert f"| precision | {ran} |" in card and "| precision | auto |" not in card


def readme_snippets(section: str) -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    text = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_snippets_answer_from_the_hf_and_gguf_exports(tmp_path):
    prompt = encode(format_prompt(PROMPTS[0]))
    own = export_model(scripted_answer(prompt, encode("Red, yellow and blue.")), tmp_path / "own", "alpaca")
    export_to(own, "hf", tmp_path / "my-model")
    export_to(own, "gguf", tmp_path / "my-model-gguf")
    snippets = readme_snippets("Use your model elsewhere")
    assert len(snippets) == 2
    for code in snippets:
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip().splitlines()[-1] == "Red, yellow and blue."
