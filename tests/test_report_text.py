"""The evaluation report shows a suite's texts as text: no tag, link or image from a suite reaches its HTML."""
from __future__ import annotations

import json

from evaluation.report import write_report
from evaluation.runner import EvalConfig, run_evaluation

XSS = "<img src=x onerror=alert(1)>"


def test_prompts_categories_and_names_are_escaped_in_markdown_and_html(tiny_engine, tmp_path):
    suite = tmp_path / f"{XSS}.jsonl"
    cases = [{"id": f"{XSS}-{n}", "category": XSS, "prompt": f"{XSS} [click](javascript:alert(2)) | cell {n}",
              "check": {"type": "contains", "value": XSS}} for n in range(2)]
    suite.write_text("".join(json.dumps(c) + "\n" for c in cases) + "{not json <script>alert(3)</script>\n",
                     encoding="utf-8")
    run = run_evaluation(tiny_engine, EvalConfig(suite=str(suite), variants=["base", "a1"], max_new_tokens=4),
                         tmp_path)
    paths = write_report(run)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    page = paths["html"].read_text(encoding="utf-8")
    for text in (markdown, page):
        assert "<img src=x" not in text and "<script" not in text
    assert "href" not in page and "\\[click\\]" in markdown  # the suite's link is shown as text, not made a link
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 4  # title, category, case, prompt: shown, as text
    assert "[click](javascript:alert(2))" in page and "<details>" in page  # the report's own HTML is still there
