"""lm-evaluation-harness on the project's own model: the same scores as lm-eval's ``hf`` model on
the Hugging Face export, through ``gpt2 eval --tasks``, on local task files (no hub)."""

import json
import textwrap
import time

import pytest
import torch

from gpt2_lightning.apps.cli import main
from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.errors import ConfigError, DataError
from gpt2_lightning.evaluate.benchmarks import run_benchmarks
from gpt2_lightning.export.folder import export_model
from gpt2_lightning.export.hf import export_hf
from gpt2_lightning.model.gpt import GPTConfig, GPTModel

lm_eval = pytest.importorskip("lm_eval")

COLORS = ["red", "blue", "green", "yellow"]
STORY = ("Once upon a time there was a small village by the sea where the fishermen went out every morning "
         "and came back every evening with their nets full of fish, and the children ran to meet them. ") * 12


def task_files(folder):
    """Three local tasks, one of each kind of request: multiple choice (loglikelihood), perplexity
    over a text longer than the context (loglikelihood_rolling) and generation (generate_until)."""
    data = folder / "data"
    data.mkdir()
    with open(data / "mc.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"question": f"Apple number {i} is", "choices": [f" {c}" for c in COLORS],
                                "answer": i % 4}) + "\n")
    (data / "text.jsonl").write_text(json.dumps({"text": STORY}) + "\n" + json.dumps({"text": "A short one."}) + "\n")
    with open(data / "gen.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"question": f"Q: what is {i} plus one?\nA:", "answer": f" {i + 1}"}) + "\n")
    common = "test_split: test\ndataset_path: json\n"
    (folder / "tiny_mc.yaml").write_text(common + textwrap.dedent(f"""\
        task: tiny_mc
        dataset_kwargs: {{data_files: {{test: {data / 'mc.jsonl'}}}}}
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}},
                      {{metric: acc_norm, aggregation: mean, higher_is_better: true}}]
        """))
    (folder / "tiny_ppl.yaml").write_text(common + textwrap.dedent(f"""\
        task: tiny_ppl
        dataset_kwargs: {{data_files: {{test: {data / 'text.jsonl'}}}}}
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{{{text}}}}"
        metric_list: [{{metric: word_perplexity}}, {{metric: bits_per_byte}}]
        """))
    (folder / "tiny_gen.yaml").write_text(common + textwrap.dedent(f"""\
        task: tiny_gen
        dataset_kwargs: {{data_files: {{test: {data / 'gen.jsonl'}}}}}
        output_type: generate_until
        doc_to_text: "{{{{question}}}}"
        doc_to_target: "{{{{answer}}}}"
        generation_kwargs: {{until: ["\\n"], max_gen_toks: 8, do_sample: false}}
        metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
        """))
    return folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return task_files(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    return GPTModel(GPTConfig(vocab_size=50257, context_length=256, emb_dim=64, n_layers=2, n_heads=4)).eval()


def responses(results, task):
    """Each request's answer in order: (log-likelihood, greedy), a rolling log-likelihood, or a text."""
    return [resp for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"])
            for resp in sample["filtered_resps"]]


@pytest.mark.slow
def test_scores_equal_lm_evals_hf_model_on_the_hugging_face_export(tiny, tasks, tmp_path):
    names = ["tiny_mc", "tiny_ppl", "tiny_gen"]
    ours = run_benchmarks(tiny, names, include_path=tasks, log_samples=True)
    export_hf(tiny, get_style("alpaca"), tmp_path)
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp_path},dtype=float32", tasks=names,
                                     task_manager=lm_eval.tasks.TaskManager(include_path=str(tasks)),
                                     log_samples=True, batch_size=4, device="cpu")
    for task in names:
        mine, hf = responses(ours, task), responses(theirs, task)
        assert len(mine) == len(hf) > 0
        if task == "tiny_mc":
            assert [m[0] for m in mine] == pytest.approx([h[0] for h in hf], abs=1e-4)
            assert [m[1] for m in mine] == [h[1] for h in hf]
        elif task == "tiny_ppl":
            assert mine == pytest.approx(hf, abs=1e-3)  # a sum over hundreds of tokens
        else:
            assert mine == hf
        for metric, value in theirs["results"][task].items():
            if "stderr" not in metric and isinstance(value, float):
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-5), (task, metric)


def test_gpt2_eval_tasks_writes_benchmarks_json_and_merges_a_second_task(tiny, tasks, tmp_path, capsys):
    model_dir = export_model(tiny, tmp_path / "model", prompt_style="alpaca")
    out = tmp_path / "benchmarks.json"
    args = ["eval", str(model_dir), "--include-path", str(tasks), "--out", str(out), "--batch-size", "4"]
    assert main([*args, "--tasks", "tiny_mc", "--limit", "8"]) == 0
    printed = capsys.readouterr().out
    assert "tiny_mc" in printed and "acc_norm" in printed and str(out) in printed
    first = json.loads(out.read_text())
    assert first["n-samples"]["tiny_mc"]["effective"] == 8 and first["model_name"] == str(model_dir)
    assert main([*args, "--tasks", "tiny_gen"]) == 0
    both = json.loads(out.read_text())
    assert set(both["results"]) == {"tiny_mc", "tiny_gen"}
    assert both["results"]["tiny_mc"] == first["results"]["tiny_mc"]


def test_an_unknown_task_stops_in_one_line_before_loading_anything(tiny, tasks):
    with pytest.raises(ConfigError, match="unknown lm-eval task: no_such_task"):
        run_benchmarks(tiny, ["tiny_mc", "no_such_task"], include_path=tasks)


def test_a_hub_task_without_the_hub_stops_at_once_in_one_line(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:1")  # a hub that cannot be reached, network or not
    (tmp_path / "hub_task.yaml").write_text(textwrap.dedent("""\
        task: hub_task
        dataset_path: no-such-user/no-such-dataset
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{q}}"
        doc_to_choice: "{{c}}"
        doc_to_target: 0
        """))
    started = time.perf_counter()
    with pytest.raises(DataError, match="hub_task: the task data is on the Hugging Face hub, and 127.0.0.1 cannot"):
        run_benchmarks(tiny, ["hub_task"], include_path=tmp_path)
    assert time.perf_counter() - started < 10


@pytest.mark.slow
def test_lm_evals_local_completions_client_scores_through_gpt2_serve_as_gpt2_eval_does(tiny, tasks, tmp_path):
    from gpt2_lightning.apps.serve import create_app
    from tests.serving import serving

    names = ["tiny_mc", "tiny_gen"]
    ours = run_benchmarks(tiny, names, include_path=tasks, log_samples=True)
    export_hf(tiny, get_style("alpaca"), tmp_path)  # lm-eval's client tokenises with the export's tokenizer
    with serving(create_app(tiny, get_style("alpaca"), name="tiny")) as url:
        served = lm_eval.simple_evaluate(
            model="local-completions", tasks=names, log_samples=True,
            model_args=f"model=tiny,base_url={url}/v1/completions,tokenizer={tmp_path},num_concurrent=1,"
                       "max_retries=1,tokenized_requests=True,batch_size=4",
            task_manager=lm_eval.tasks.TaskManager(include_path=str(tasks), include_defaults=False))
    mine, theirs = responses(ours, "tiny_mc"), responses(served, "tiny_mc")
    assert [m[0] for m in mine] == pytest.approx([t[0] for t in theirs], abs=1e-4)
    assert [m[1] for m in mine] == [t[1] for t in theirs]
    assert responses(ours, "tiny_gen") == responses(served, "tiny_gen")
    for task in names:
        assert served["results"][task] == pytest.approx(ours["results"][task], rel=1e-5)
