"""``gpt2 compare``: the runs of a real Hydra sweep, ranked, with what each set differently."""

import json
import shutil

import pytest

from gpt2_lightning.apps.compare import find_runs, ranked
from gpt2_lightning.export.run import Run
from tests.browser import headless_chromium
from tests.conftest import REPO_ROOT, run_train_py
from tests.test_command import gpt2


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    result = run_train_py("-m", "model=tiny", "data=sample", "trainer=cpu", "trainer.max_steps=6",
                          "trainer.val_check_interval=3", "optimizer.lr=1e-4,1e-2,3e-3", "generation.max_new_tokens=2",
                          "plot=false", "export=false", "callbacks.progress_bar.refresh_rate=0",
                          "~callbacks.response_sample", f"hydra.sweep.dir={folder}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_a_sweep_folder_stands_for_its_runs_ranked_by_best_val_loss(sweep):
    shown = gpt2("compare", str(sweep), "--json", cwd=REPO_ROOT)
    assert shown.returncode == 0, shown.stderr[-2000:]
    rows = json.loads(shown.stdout)
    assert sorted(r["run"] for r in rows) == [str(sweep / job) for job in "012"]
    scores = {r["run"]: json.loads((sweep / r["run"] / "eval.json").read_text()) for r in rows}
    assert [r["best_val_loss"] for r in rows] == sorted(s["best_val_loss"] for s in scores.values())
    for r in rows:
        assert r["test_loss"] == scores[r["run"]]["test_loss"] and r["rouge_l"] == scores[r["run"]]["rouge_l"]
        assert r["train_seconds"] > 0
    assert {o for r in rows for o in r["overrides"] if o.startswith("optimizer.lr=")} == \
        {"optimizer.lr=0.0001", "optimizer.lr=0.01", "optimizer.lr=0.003"}


def test_the_table_says_the_shared_overrides_once_and_each_runs_own_on_its_line(sweep):
    shown = gpt2("compare", str(sweep / "2"), str(sweep), "--sort", "test_loss", cwd=REPO_ROOT)
    assert shown.returncode == 0, shown.stderr[-2000:]
    first, header, *lines, page = shown.stdout.splitlines()
    assert page == f"page: {sweep / 'compare.html'}"  # in the folder that holds every run
    assert first.startswith("all runs: ") and "model=tiny" in first and "optimizer.lr" not in first
    assert header.split()[:3] == ["#", "run", "overrides"] and len(lines) == 3  # a run given twice is one row
    for line in lines:
        assert "optimizer.lr=" in line and "model=tiny" not in line
    losses = [float(line.split()[5]) for line in lines]
    assert losses == sorted(losses)


def test_runs_without_a_score_rank_last_and_a_folder_without_runs_is_one_line(sweep, tmp_path):
    rows = [{"run": "a", "rouge_l": None}, {"run": "b", "rouge_l": 0.2}, {"run": "c", "rouge_l": 0.5}]
    assert [r["run"] for r in ranked(rows, "rouge_l")] == ["c", "b", "a"]
    assert find_runs(tmp_path) == []
    shown = gpt2("compare", str(tmp_path), cwd=REPO_ROOT)
    assert shown.returncode == 2 and shown.stderr.strip() == f"error: {tmp_path}: holds no runs (no .hydra/config.yaml " \
        f"in it or in its folders)"


def test_each_run_logs_its_settings_with_its_final_scores_for_tensorboards_hparams_tab(sweep):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    for job in "012":
        run = sweep / job
        values = [v for path in sorted((run / "tensorboard").glob("events.out.tfevents.*"))
                  for event in EventFileLoader(str(path)).Load() for v in event.summary.value]
        [start] = [v for v in values if v.tag == "_hparams_/session_start_info"]
        assert start.metadata.plugin_data.plugin_name == "hparams"
        info = plugin_data_pb2.HParamsPluginData.FromString(start.metadata.plugin_data.content).session_start_info
        hparams = {k: v.ListFields()[0][1] for k, v in info.hparams.items()}
        [given] = [o for o in Run(run).overrides() if o.startswith("optimizer.lr=")]
        assert hparams["optimizer.lr"] == pytest.approx(float(given.split("=")[1]))
        assert hparams["model"] == "tiny" and hparams["trainer.max_steps"] == 6 and "trainer.precision" in hparams
        scores = json.loads((run / "eval.json").read_text())
        logged = {v.tag: v.simple_value if v.HasField("simple_value") else float(tensor_util.make_ndarray(v.tensor))
                  for v in values if v.tag.startswith("hp/")}
        assert logged == pytest.approx({"hp/best_val_loss": scores["best_val_loss"], "hp/test_loss": scores["test_loss"],
                                        "hp/rouge_l": scores["rouge_l"], "hp/exact_match": scores["exact_match"]})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="Debian's chromium-driver is not installed")
def test_compare_html_shows_every_run_score_and_answer_and_sorts_in_headless_chromium(sweep, tmp_path):
    from selenium.webdriver.common.by import By

    pytest.importorskip("lm_eval")
    from tests.test_benchmarks import task_files

    tasks = task_files(tmp_path)
    evaluated = gpt2("eval", str(sweep / "1"), "--tasks", "tiny_mc", "--include-path", str(tasks), cwd=REPO_ROOT)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    shown = gpt2("compare", str(sweep), cwd=REPO_ROOT)
    assert shown.returncode == 0 and f"page: {sweep / 'compare.html'}" in shown.stdout, shown.stderr[-2000:]
    assert "tiny_mc acc" in shown.stdout.splitlines()[1]  # the benchmark's column in the table
    rows = json.loads(gpt2("compare", str(sweep), "--json", cwd=REPO_ROOT).stdout)
    with headless_chromium() as driver:
        driver.get((sweep / "compare.html").as_uri())
        ranking = driver.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in ranking] == [r["run"] for r in rows]
        headings = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#ranking th")]
        accuracy = json.loads((sweep / "1" / "benchmarks.json").read_text())["results"]["tiny_mc"]["acc,none"]
        [with_benchmark] = [r for r in ranking if r.find_elements(By.TAG_NAME, "td")[1].text == str(sweep / "1")]
        assert float(with_benchmark.find_elements(By.TAG_NAME, "td")[headings.index("tiny_mc acc")]
                     .get_attribute("data-value")) == pytest.approx(accuracy)
        answers = {str(sweep / job): json.loads((sweep / job / "responses.json").read_text()) for job in "012"}
        records = driver.find_elements(By.CSS_SELECTOR, "#records tbody tr")
        assert len(records) == len(answers[rows[0]["run"]]) and all(r.is_displayed() for r in records)
        first = records[0].find_elements(By.TAG_NAME, "td")
        assert [td.text for td in first[3:]] == [answers[r["run"]][0]["model_response"].strip() for r in rows]
        driver.find_element(By.CSS_SELECTOR, "#records th[data-numeric='1']").click()
        driver.find_element(By.CSS_SELECTOR, "#records th[data-numeric='1']").click()  # again: highest first
        numbers = [int(r.find_elements(By.TAG_NAME, "td")[0].text) for r in
                   driver.find_elements(By.CSS_SELECTOR, "#records tbody tr")]
        assert numbers == sorted(numbers, reverse=True)
        assert driver.find_element(By.CSS_SELECTOR, "img[alt='loss curves']").get_attribute("naturalWidth") != "0"


def test_compare_never_replaces_a_page_it_did_not_write(sweep, tmp_path):
    mine = tmp_path / "compare.html"
    mine.write_text("<html>my own notes</html>")
    shown = gpt2("compare", str(sweep), "--html", str(mine), cwd=REPO_ROOT)
    assert shown.returncode == 2 and "is not a page gpt2 compare wrote" in shown.stderr
    assert mine.read_text() == "<html>my own notes</html>"


@pytest.mark.slow
def test_a_sweep_through_submitits_launcher_runs_each_job_as_a_run_that_compare_ranks(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    folder = tmp_path / "sweep"
    result = run_train_py("-m", "hydra/launcher=submitit_local", "model=tiny", "data=sample", "trainer=cpu",
                          "trainer.max_steps=4", "trainer.val_check_interval=2", "optimizer.lr=1e-3,1e-2",
                          "generation.max_new_tokens=2", "plot=false", "export=false",
                          "callbacks.progress_bar.refresh_rate=0", "~callbacks.response_sample",
                          f"hydra.sweep.dir={folder}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / ".submitit").is_dir()  # the jobs ran through submitit, each a process of its own
    rows = json.loads(gpt2("compare", str(folder), "--json", cwd=REPO_ROOT).stdout)
    assert sorted(r["run"] for r in rows) == [str(folder / "0"), str(folder / "1")]
    assert [r["best_val_loss"] for r in rows] == sorted(r["best_val_loss"] for r in rows)
    assert all(r["test_loss"] is not None and r["train_seconds"] > 0 for r in rows)
