"""``report.html``: a run on one page, opened from disk in a real (headless) browser."""

import html
import json
import shutil

import pytest

from gpt2_lightning.data.records import reference_answer
from gpt2_lightning.evaluate.report import asked
from gpt2_lightning.evaluate.scores import rouge_l
from tests.browser import headless_chromium
from tests.conftest import REPO_ROOT, TINY_RUN, run_train_py
from tests.test_command import gpt2


@pytest.fixture(scope="module")
def answered_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    settings = [a for a in TINY_RUN if a not in ("respond=false", "test=false")]
    result = run_train_py(*settings, "trainer.max_steps=6", "trainer.log_every_n_steps=1", "generation.max_new_tokens=6",
                          "optimizer.lr=3e-3", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_every_run_writes_a_report_of_its_settings_scores_losses_and_answers_that_needs_no_network(answered_run):
    page = (answered_run / "report.html").read_text()
    responses = json.loads((answered_run / "responses.json").read_text())
    scores = json.loads((answered_run / "eval.json").read_text())
    assert len(responses) == 6 and page.count("<tr><td data-value=") == 6
    for record in responses:
        assert html.escape(record["instruction"]) in page and html.escape(record["model_response"]) in page
    assert f"{scores['test_loss']:.4g}" in page and f"{scores['rouge_l']:.4g}" in page
    assert '<img alt="loss curves" src="data:image/png;base64,' in page and "optimizer.lr=3e-3" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch: it opens offline
    (answered_run / "report.html").unlink()
    again = gpt2("report", str(answered_run), cwd=REPO_ROOT)
    assert again.returncode == 0 and (answered_run / "report.html").read_text() == page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="Debian's chromium-driver is not installed")
def test_the_worst_answers_come_first_in_one_click_and_the_filter_keeps_matching_rows(answered_run):
    from selenium.webdriver.common.by import By

    responses = json.loads((answered_run / "responses.json").read_text())
    with headless_chromium() as driver:
        driver.get((answered_run / "report.html").as_uri())
        driver.find_element(By.ID, "worst").click()
        rows = driver.find_elements(By.CSS_SELECTOR, "#records tbody tr")
        shown = [float(row.find_elements(By.TAG_NAME, "td")[4].get_attribute("data-value")) for row in rows]
        expected = sorted(round(rouge_l(r["model_response"], reference_answer(r)), 4) for r in responses)
        assert shown == expected
        text = responses[0]["instruction"]
        driver.find_element(By.ID, "filter").send_keys(text)
        visible = [row for row in rows if row.is_displayed()]
        matching = [r for r in responses
                    if text.lower() in "".join((asked(r), reference_answer(r), r["model_response"])).lower()]
        assert len(visible) == len(matching) >= 1 and driver.find_element(By.ID, "shown").text == str(len(matching))
