"""Feature dashboards as a reader sees them: opened in headless Chromium, browsed from the index to a
feature page and back, checked against the numbers they were written from (shipped SAE, held-out text)."""

import itertools
import re

import pytest
import torch
from _browser import artifacts_dir

from avec.dictionaries import dashboard, logit_effects, top_examples
from avec.dictionaries.contexts import context_rule, iter_contexts
from avec.dictionaries.heldout import split_documents
from avec.dictionaries.shipped import available, load_shipped

NAME = "smollm2-blocks.12.resid_post-topk-4608"
pytestmark = pytest.mark.skipif(NAME not in available(), reason="the SAE is not shipped")


@pytest.fixture(scope="module")
def written(smollm2, tmp_path_factory):
    lm, sae = smollm2, load_shipped(NAME)
    rule = context_rule(lm.tokenizer, 48, prepend_bos=True)
    docs = split_documents("default", "heldout", 2, shuffle=True, seed=1)
    texts = torch.stack(list(itertools.islice(iter_contexts(docs, lm.tokenizer, rule), 12)))
    # the features most active on these texts, so every page has examples
    with lm.dictionary(sae, at=sae.cfg.hook) as d:
        lat = lm.run(texts, cache=[d.point("latents")]).cache[d.point("latents")][:, 1:]
    ids = lat.amax((0, 1)).topk(4).indices.tolist()
    folder = tmp_path_factory.mktemp("dash")
    index = dashboard(lm, sae, sae.cfg.hook, texts, ids, folder, k=5)
    examples = top_examples(lm, sae, sae.cfg.hook, texts, ids, k=5)
    effects = {f: logit_effects(lm, sae, f, k=10) for f in ids}
    return index, ids, examples, effects


def _rgb_alpha(css: str) -> float:
    nums = [float(x) for x in re.findall(r"[\d.]+", css)]
    return nums[3] if len(nums) == 4 else 1.0


def test_index_to_feature_page_and_back(page, written):
    index, ids, examples, effects = written
    page.goto(index.as_uri())
    rows = page.locator("table tr")
    assert rows.count() == len(ids) + 1  # header + one row per feature
    assert page.locator("table a").all_inner_texts() == [str(f) for f in ids]
    page.screenshot(path=str(artifacts_dir() / "dashboard-index.png"), full_page=True)

    f = ids[0]
    page.locator("table a", has_text=str(f)).first.click()
    page.wait_for_load_state()
    assert page.url.endswith(f"feature_{f}.html")
    fe = examples[f]
    assert page.locator("h1").inner_text() == f"Feature {f} at blocks.12.resid_post"
    # the histogram: one bar per bin, the tallest bar's count in the axis label
    bars = page.locator("svg[aria-label='activation histogram'] rect")
    assert bars.count() == len(fe.hist_counts)
    assert page.locator("svg text").nth(2).text_content() == str(max(fe.hist_counts))
    # top examples: in order, each peak token outlined, its hover value the example's activation
    shown = page.locator("div.ex")
    assert shown.count() == len(fe.examples)
    peaks = page.locator("div.ex span.max")
    for j, ex in enumerate(fe.examples):
        assert peaks.nth(j).get_attribute("title") == f"{ex.acts[ex.center]:.4g}"
        assert peaks.nth(j).inner_text().replace("\u21b5", "") == ex.tokens[ex.center]
    # the strongest example's peak is shaded fully, weaker ones less
    alphas = [_rgb_alpha(peaks.nth(j).evaluate("e => getComputedStyle(e).backgroundColor")) for j in range(peaks.count())]
    assert alphas[0] == pytest.approx(1.0, abs=0.01) and alphas == sorted(alphas, reverse=True)
    # logit effects: the top tokens in order
    cells = page.locator("td.pos.t").all_inner_texts()  # spaces kept: " Paris" is not "Paris"
    assert [c.replace("\u21b5", "") for c in cells] == [s for _, s, _ in effects[f].top]
    page.screenshot(path=str(artifacts_dir() / f"dashboard-feature-{f}.png"), full_page=True)

    page.locator("a", has_text="all features").click()
    page.wait_for_load_state()
    assert page.url.endswith("index.html")
    assert not page.errors
    assert all(u.startswith("file://") for u in page.requests), "pages must be self-contained"


def test_a_page_in_the_tour_report_renders_inside_it(page, written, tmp_path):
    from avec.dictionaries.dashboard import feature_page
    from avec.app.tour.dictionaries import _embed
    from avec.app.report.html import Report

    _, ids, examples, effects = written
    report = Report("t")
    report.section("features").raw(_embed(feature_page(examples[ids[1]], effects[ids[1]], "blocks.12.resid_post")))
    path = report.save(tmp_path / "r.html")
    page.goto(path.as_uri())
    frame = page.frame_locator("iframe")
    assert frame.locator("h1").inner_text() == f"Feature {ids[1]} at blocks.12.resid_post"
    assert frame.locator("div.ex").count() == len(examples[ids[1]].examples)
    assert not page.errors
