"""The page as a newcomer meets it (issue 14), in a real browser on the tiny engine: nothing lost on reload,
refusals beside the control (never over the chats), waits and limits said, one vote per turn, 1-5 ratings
up to the Leaderboard, a taken name asked about, presets that follow edits, uploads that replace.

One page for the module, in order; each test groups the checks of one tab."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from models import Engine, EngineConfig

SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def text(page, selector: str) -> str:
    return page.inner_text(selector)


def wait_text(page, selector: str, needle: str, timeout: float = 60_000) -> None:
    page.wait_for_function("([s, n]) => document.querySelector(s) && document.querySelector(s).innerText.includes(n)",
                           arg=[selector, needle], timeout=timeout)


def bots(page, chat: str) -> list[str]:
    return page.locator(f"#{chat} [data-testid='bot']").all_inner_texts()


def shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


@pytest.fixture(scope="module")
def page(launch_app, browser, tmp_path_factory, tiny_model_path, tiny_adapters):
    data = tmp_path_factory.mktemp("ui_data")
    for name in ("a1", "a2"):
        shutil.copytree(tiny_adapters / name, data / "adapters" / name)
    ctx, url = launch_app(Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data)))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#compare-message textarea")
    page.ctx = ctx  # the tests read the server's stores
    yield page
    page.close()


def test_compare_keeps_the_chats_through_refusals_votes_once_and_ratings_reach_the_leaderboard(page):
    page.get_by_role("tab", name="Leaderboard").click()  # empty: real headers, not "1 2 3"
    wait_text(page, "#leaderboard-summary", "No votes yet")
    assert "95% interval" in text(page, "#leaderboard-table") and "mean rating" in text(page, "#leaderboard-ratings")
    page.get_by_role("tab", name="Compare").click()
    tokens = page.locator("#compare-new-tokens input[type=number]")  # beside Send, CPU default
    assert tokens.is_visible() and tokens.input_value() == "96"
    tokens.fill("4")
    tokens.press("Tab")
    page.fill("#compare-message textarea", "Hi")
    page.click("#compare-send")
    wait_text(page, "#compare-stats-1", "s in all")
    chats = bots(page, "compare-chat-0"), bots(page, "compare-chat-1")
    assert len(chats[1]) == 1 and chats[1][0].strip()
    # An empty message and a 5,000-character one are refused in a toast and at the note; nothing else changes.
    page.fill("#compare-message textarea", "")
    page.click("#compare-send")
    page.get_by_text("type a message first").wait_for(timeout=30_000)
    page.fill("#compare-message textarea", "x" * 5000)  # the counter runs in the browser
    wait_text(page, "#compare-note", "5000 / 4000 characters: too long to send", 10_000)
    assert page.eval_on_selector("#compare-message textarea", "e => e.value.length") == 5000  # not cut
    page.click("#compare-send")
    page.get_by_text("the message is 5000 characters; the limit is 4000").wait_for(timeout=30_000)
    assert (bots(page, "compare-chat-0"), bots(page, "compare-chat-1")) == chats
    for area in ("#compare-chat-0", "#compare-chat-1", "#compare-stats-0", "#compare-stats-1"):
        assert "Error" not in text(page, area)
    wait_text(page, "#compare-note", "Error", 10_000)  # the mark is beside the box, not over the chats
    # One vote per answered turn: the bar closes after it.
    page.click("#compare-vote-best-2")
    wait_text(page, "#compare-vote-status", "Vote saved")
    page.wait_for_selector("#compare-vote-tie[disabled]", timeout=10_000)
    assert page.locator("#compare-vote-best-1").is_disabled()
    # A rating, changed once: one row for this answer, its new score.
    page.locator("#compare-rate-1").get_by_label("3").check()
    wait_text(page, "#compare-rate-1", "saved: 3 of 5")
    page.locator("#compare-rate-1").get_by_label("5").check()
    wait_text(page, "#compare-rate-1", "saved: 5 of 5")
    [rating] = page.ctx.ratings.all()
    assert (rating.variant, rating.score, rating.mode) == ("a1", 5, "compare")
    shot(page, "compare.png")
    page.get_by_role("tab", name="Leaderboard").click()
    wait_text(page, "#leaderboard-ratings", "5.00")
    assert text(page, "#leaderboard-summary").startswith("1 vote (0 blind arena, 1 from Compare); 1 rating")
    assert "too few votes to tell" in text(page, "#leaderboard-table")
    assert "too few ratings to tell" in text(page, "#leaderboard-ratings")
    shot(page, "leaderboard.png")


def test_an_evaluation_is_found_again_after_a_reload_then_cancelled_and_generation_is_listed(page, tmp_path):
    page.get_by_role("tab", name="Evaluate").click()
    page.wait_for_selector("#eval-suite input")
    assert page.input_value("#eval-suite input") == "evaluation/suites/starter.jsonl"  # relative, not /work/...
    page.locator("#eval-limit input").fill("4")
    tokens = page.locator("#eval-new-tokens input[type=number]")
    tokens.fill("1024")  # long enough to still be running after the reload
    tokens.press("Tab")
    page.click("#eval-run")
    wait_text(page, "#eval-status", "running")
    run = text(page, "#eval-status").split()[0]
    page.reload()  # lands on Evaluate again, finds the run and its progress
    wait_text(page, "#eval-status", f"{run} (evaluation of starter.jsonl) running", 30_000)
    assert page.get_by_role("tab", name="Evaluate").get_attribute("aria-selected") == "true"
    assert run in text(page, "#eval-runs")
    page.click("#eval-cancel")
    wait_text(page, "#eval-status", "cancelled", 120_000)
    wait_text(page, "#eval-report", "Cancelled before the end", 30_000)
    # A generation runs in the background too and joins the list.
    texts = tmp_path / "texts.txt"
    texts.write_text("The sky is blue.\n", encoding="utf-8")
    page.get_by_text("Generate data with a teacher model").click()
    page.locator("#gen-input input[type=file]").set_input_files(str(texts))
    page.wait_for_timeout(1000)
    page.click("#gen-run")
    wait_text(page, "#gen-status", "Started")
    # The status follows the new run (a list refresh that read the older pick no longer puts it back).
    wait_text(page, "#eval-status", "(generation of generated.json) done: 1/1 texts", 180_000)
    assert "generated.json" in text(page, "#eval-runs")
    shot(page, "evaluate.png")


def test_training_asks_before_replacing_a_name_and_the_preset_follows_edits(page):
    page.get_by_role("tab", name="Training").click()
    page.wait_for_selector("#train-name textarea")
    assert page.input_value("#train-dataset input") == "training/examples/ahoy_demo.json"
    page.get_by_text("Advanced settings").click()
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("1")
    epochs.press("Tab")
    expect(page.get_by_label("Custom", exact=True)).to_be_checked()  # an edit leaves the preset
    page.get_by_label("Quick CPU demo (a few minutes on the default model)").check()  # clicked again: reapplied
    expect(epochs).to_have_value("5")
    page.fill("#train-name textarea", "a1")  # a1 is already an adapter here
    page.click("#train-start")
    wait_text(page, "#train-report", "already exists")
    report = text(page, "#train-report")
    assert "a1-2 is free" in report and "DATA/trash/a1-" in report
    assert page.locator("#train-replace").is_visible()
    assert page.ctx.jobs.store.list() == []  # asked, nothing started
    shot(page, "training-asks.png")


def test_an_upload_names_the_adapter_from_its_zip_and_a_second_choice_replaces_the_first(page, tmp_path,
                                                                                     tiny_adapters):
    zips = []
    for name, adapter in (("My adapter (2).zip", "a3"), ("second.zip", "a2")):
        zips.append(tmp_path / name)
        with zipfile.ZipFile(zips[-1], "w") as archive:
            for file in (tiny_adapters / adapter).iterdir():
                archive.write(file, file.name)
    page.get_by_role("tab", name="Models").click()
    page.get_by_text("Upload an adapter").click()
    for path in zips:
        with page.expect_file_chooser() as chooser:
            page.click("#models-choose")
        chooser.value.set_files(str(path))
        wait_text(page, "#models-files", path.stem, 30_000)  # the page shows the name and ".zip" apart
    assert page.input_value("#models-name textarea") == "second"
    assert "My adapter" not in text(page, "#models-files")  # replaced, not piled up
    page.fill("#models-name textarea", "a1")  # taken: refused in a toast, the table stays
    page.click("#models-install")
    page.get_by_text("adapter 'a1' already exists").wait_for(timeout=30_000)
    assert "a2" in text(page, "#models-table") and "Base model" in text(page, "body")
    page.fill("#models-name textarea", "second")
    page.click("#models-install")
    wait_text(page, "#models-status", "second", 60_000)
    assert "second" in text(page, "#models-table")
    shot(page, "models.png")
