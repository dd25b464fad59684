"""The report in a real headless browser (Debian's Chromium): it renders, every image loads, no console errors, the
claims table opens it, the setup section holds the phase table and LoRA's time sets the per-second section."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, tiny_tokenizer):
    """A complete tiny study (every section) to render."""
    from tests.conftest import _tiny_model
    from tests.test_study import CONFIG

    root = tmp_path_factory.mktemp("browser")
    model = _tiny_model("llama", len(tiny_tokenizer))
    model.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    import json

    data = root / "data" / "rte"
    data.mkdir(parents=True)
    rows = [
        {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"},
        {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"},
    ]
    for name, n in (("train.jsonl", 6), ("val.jsonl", 2)):
        (data / name).write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(rows * n)))
    cfg = root / "study.toml"
    cfg.write_text(
        CONFIG.format(model=root / "model", data=root / "data", methods='["majority", "no_prompt", "english_prompt", "lora"]')
    )
    from softprompt.study import run_study

    run_study(cfg, root / "study", progress=False)
    return root / "study" / "report.html"


def test_report_renders_in_chromium(tiny_report):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium installed (.ci/run installs Debian's chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(tiny_report.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        subheadings = page.eval_on_selector_all("h3", "els => els.map(e => e.textContent)")
        verdicts = page.eval_on_selector_all("table.claims td.verdict", "els => els.map(e => e.textContent)")
        claims_visible = page.is_visible("table.claims")
        phase_rows = page.eval_on_selector_all("#setup div.phases > table tbody tr", "els => els.length")
        time_rows = page.eval_on_selector_all("h3#per-second + table tbody tr", "els => els.length")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert len(images) >= 5
    broken = [alt for complete, width, alt in images if not complete or width == 0]
    assert not broken, broken
    # the seed study's claims open the page, one verdict each; the setup section says where the time went
    assert headings[0] == "The seed study's claims" and claims_visible
    assert len(verdicts) == 11 and set(verdicts) <= {"supported", "not supported", "inconclusive", "not testable"}
    assert "Where the time went" in subheadings and phase_rows >= 5
    # LoRA sets the time the prompts are measured against: the table and the accuracy-against-time figure render
    assert "Per second of training" in subheadings and time_rows >= 2
    assert any("against each run's wall time" in alt or "against training time" in alt.lower() for _, _, alt in images), [
        a for _, _, a in images
    ]
    for title in (
        "Findings",
        "Accuracy",
        "Nearest tokens and surviving words",
        "Stochasticity across seeds",
        "Transfer between tasks",
        "What the prompts say",
    ):
        assert title in headings
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
