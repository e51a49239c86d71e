"""The report in a real headless Chromium, served by `python -m http.server`: every page type loads with no
error and no failed request, its charts are drawn, a dataset page says what its labels mean and shows test prompts
as text, its example links open the viewer at the probe's top head, the viewer shows the stored attention values,
and a screenshot of each page type is written to test-artifacts/report/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from featstore.api import Store
from tests.browser import open_browser, serve, visit

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "report"
DATASET_PAGE = "models/random-tiny/1_toy.html"
HOSTILE_PROMPT = "<script>window.pwned = 1</script><b>bold?</b> "


@pytest.fixture(scope="module")
def site(reported):
    """(base URL, browser, report folder) for the shared reported project."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serve(reported.report_dir) as base_url, open_browser() as browser:
        yield base_url, browser, reported.report_dir


def first_example(report_dir: Path) -> dict:
    page = json.loads((report_dir / "data" / "random-tiny" / "1_toy.json").read_text())
    example_id = page["examples"]["highest scores"][0]["example_id"]
    return json.loads((report_dir / "data" / "random-tiny" / "1_toy" / "examples" / f"{example_id}.json").read_text())


def test_overview_loads_clean_and_sorts(site):
    base_url, browser, report_dir = site
    visit_ = visit(browser, base_url + "index.html", ARTIFACTS / "overview.png")
    visit_.assert_clean()
    page = visit_.page
    assert page.locator("table.results tbody td.auc").count() == 6
    assert page.locator("table.delta tbody td.delta-cell").count() == 5  # every setting but the baseline
    assert page.locator("table.delta tfoot th").inner_text() == "mean (n=1)"
    assert page.locator(".scale .swatch").count() == 7
    assert page.locator("table.results:not(.delta) .badge.hard").count() in (0, 1)
    headers = page.locator("table.results thead th")
    headers.nth(0).click()
    assert "sorted-desc" in headers.nth(0).get_attribute("class")
    page.locator(f'a[href="{DATASET_PAGE}"]').first.click()
    page.wait_for_load_state("networkidle")
    assert page.url.endswith(DATASET_PAGE)


def test_dataset_page_draws_every_chart(site):
    base_url, browser, _ = site
    visit_ = visit(browser, base_url + DATASET_PAGE, ARTIFACTS / "dataset.png")
    visit_.assert_clean()
    page = visit_.page
    # forest, ROC, AUC by layer, head map, 4 top-head profiles, length histogram
    assert page.locator("svg.chart").count() == 9
    assert page.locator("svg.chart polyline.series").count() >= 5 + 1 + 8
    assert page.locator("svg.chart rect.cell").count() == 8  # 2 layers x 4 heads
    assert page.locator("a.example-link").count() == 9


def test_dataset_page_says_what_the_labels_mean_and_shows_test_prompts_of_each_class(site, reported):
    base_url, browser, _ = site
    page = visit(browser, base_url + DATASET_PAGE).page
    counts = Store(reported).sql("SELECT n_pos, n_neg FROM datasets WHERE name = '1_toy'").iloc[0]
    line = page.locator("#label-meaning")
    assert line.is_visible()
    assert line.inner_text().startswith(
        f"Label 1 means toy: column label of toy.csv is 1 ({counts['n_pos']} "
        f"examples); label 0 means it is 0 ({counts['n_neg']})."
    )
    prompts = Store(reported).sql("SELECT example_id, label, prompt FROM examples WHERE split = 'test'")
    prompts = prompts.set_index("example_id")
    shown = page.locator("blockquote.example-text")
    assert shown.count() == 6
    for i in range(shown.count()):
        text = shown.nth(i)
        example = prompts.loc[int(text.get_attribute("data-example"))]
        assert text.is_visible() and text.get_attribute("data-label") == str(example["label"])
        assert text.inner_text() == example["prompt"]  # toy prompts are short: shown whole
    labels = [shown.nth(i).get_attribute("data-label") for i in range(6)]
    assert labels == ["1"] * 3 + ["0"] * 3


def test_example_links_open_the_viewer_at_the_probes_top_head(site, reported):
    base_url, browser, report_dir = site
    featured = json.loads((report_dir / "data" / "random-tiny" / "1_toy.json").read_text())["featured"]
    weights = Store(reported).sql(
        "SELECT layer, head, weight FROM probe_head_weights WHERE result_id = ?", [featured["result_id"]]
    )
    layer, head = (int(v) for v in weights.loc[weights["weight"].idxmax(), ["layer", "head"]])
    assert (layer, head) != (weights["layer"].min(), 0)  # else the viewer's first head would pass too
    page = visit(browser, base_url + DATASET_PAGE).page
    page.locator("a.example-link").first.click()
    page.wait_for_load_state("networkidle")
    page.locator("#tokens span.token").first.wait_for()
    assert page.eval_on_selector("#layer", "s => s.options[s.selectedIndex].text") == str(layer)
    assert page.eval_on_selector("#head", "s => s.value") == str(head)
    assert page.locator("#row-summary").inner_text().startswith(f"layer {layer}, head {head}:")


def test_example_viewer_shows_the_stored_values_for_the_chosen_layer_and_head(site):
    base_url, browser, report_dir = site
    example = first_example(report_dir)
    url = f"{base_url}example.html?model=random-tiny&dataset=1_toy&id={example['example_id']}"
    visit_ = visit(browser, url, ARTIFACTS / "example.png")
    visit_.assert_clean()
    page = visit_.page
    tokens = page.locator("#tokens span.token")
    assert tokens.count() == example["seq_len"]
    seen = set()
    for layer, head in ((0, 0), (1, 2), (0, 3)):
        page.select_option("#layer", str(layer))
        page.select_option("#head", str(head))
        shown = tokens.evaluate_all("spans => spans.map(s => [Number(s.dataset.value), s.style.background])")
        values = np.array([value for value, _ in shown], dtype=np.float16)
        np.testing.assert_array_equal(values, np.array(example["attn"][layer][head], dtype=np.float16))
        seen.add(tuple(colour for _, colour in shown))
    assert len(seen) == 3  # each head colours the tokens differently
    assert page.locator("#facts dd").first.inner_text() == "random:tiny"


def test_example_viewer_explains_a_missing_example(site):
    base_url, browser, _ = site
    visit_ = visit(browser, f"{base_url}example.html?model=random-tiny&dataset=1_toy&id=1")
    assert any("404" in problem for problem in visit_.problems)
    assert "no stored example 1" in visit_.page.locator("#error").inner_text()


def test_store_page_loads_clean(site):
    base_url, browser, _ = site
    visit_ = visit(browser, base_url + "store.html", ARTIFACTS / "store.png")
    visit_.assert_clean()
    assert visit_.page.locator("table.sortable tbody tr").count() == 2


def test_a_dataset_name_that_needs_url_encoding_and_hostile_prompts_link_load_and_stay_text(site, tmp_path):
    from featstore.catalog.splits import SplitParams
    from featstore.cli import main
    from featstore.datasets.cleaning import clean_datasets
    from featstore.datasets.registry import load_registry
    from featstore.extraction.build import build_features
    from featstore.extraction.plan import BuildSettings
    from featstore.project import init_project
    from tests.factories import registry_row, toy_raw, write_registry

    project = init_project(tmp_path / "p")
    project.raw_dir.mkdir(parents=True)
    raw = toy_raw(150)
    raw["text"] = HOSTILE_PROMPT + raw["text"] + " ." * 140  # long: the page shows the start of each
    raw.to_csv(project.raw_dir / "toy.csv", index=False)
    write_registry(project, [registry_row(7, "c++ & 50% #x", "toy.csv", **{"Probe to extraction": "col == 1"})])
    clean_datasets(project, load_registry(project), SplitParams())
    build_features(project, "random:tiny", None, BuildSettings(device="cpu", max_len=32))  # long prompts: 32 tokens do
    assert main(["--root", str(project.root), "probe", "--model", "random:tiny"]) == 0
    assert main(["--root", str(project.root), "report"]) == 0
    browser = site[1]
    with serve(project.report_dir) as base_url:
        overview = visit(browser, base_url + "index.html")
        overview.assert_clean()
        overview.page.locator("table.results tbody a").first.click()
        overview.page.wait_for_load_state("networkidle")
        assert overview.page.locator("h1").inner_text().startswith("7_c++ & 50% #x")
        assert (
            overview.page.locator("#label-meaning")
            .inner_text()
            .startswith("Label 1 means c++ & 50% #x: col == 1 holds, where col is column label of toy.csv")
        )
        texts = overview.page.locator("blockquote.example-text")
        assert texts.count() == 6
        for text in texts.all_inner_texts():
            assert text.startswith(HOSTILE_PROMPT) and re.search(r"…\s*\(\d+ characters\)$", text)
        assert overview.page.locator("blockquote.example-text *:not(span.legend)").count() == 0
        assert overview.page.evaluate("window.pwned") is None
        overview.page.locator("a.example-link").first.click()
        overview.page.wait_for_load_state("networkidle")
        assert "7_c++ & 50% #x · example" in overview.page.locator("#title").inner_text()
        assert overview.page.locator("#tokens span.token").count() > 1
        assert overview.problems == []
