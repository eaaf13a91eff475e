"""The app in a real browser (Debian's Chromium driven by Playwright), as a user clicks through it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from arena.votes import VoteStore

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def page(launch_app, real_engine, browser):
    ctx, url = launch_app(real_engine)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#compare-message textarea")
    page.ctx = ctx
    yield page
    page.close()


def bot_texts(page, chat_id: str) -> list[str]:
    return page.locator(f"#{chat_id} [data-testid='bot']").all_inner_texts()


def choose(page, dropdown: str, name: str) -> None:
    """Pick a dropdown's option by its exact name. Gradio selects on the option's mousedown; dispatching it
    directly keeps a list that opened partly below the window (the Leaderboard's form sits low) from
    failing the click as "outside of the viewport"."""
    page.click(f"{dropdown} input")
    option = page.get_by_role("option", name=name, exact=True)
    option.wait_for(timeout=10_000)
    option.dispatch_event("mousedown")


def wait_for_answers(page, chat_ids: list[str], count: int = 1, timeout: float = 90_000) -> None:
    selectors = " && ".join(
        f"document.querySelectorAll('#{c} [data-testid=\"bot\"]').length >= {count} && "
        f"document.querySelectorAll('#{c} [data-testid=\"bot\"]')[{count - 1}].innerText.trim().length > 0"
        for c in chat_ids
    )
    page.wait_for_function(f"() => {selectors}", timeout=timeout)


def test_compare_fills_every_column(page):
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-message textarea", "What is the capital of France?")
    page.click("#compare-send")
    wait_for_answers(page, ["compare-chat-0", "compare-chat-1"])
    page.wait_for_function("() => document.querySelector('#compare-stats-1')?.innerText.includes('tok/s')", timeout=60_000)
    assert "Paris" in bot_texts(page, "compare-chat-0")[0]
    assert bot_texts(page, "compare-chat-1")[0].strip()
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)


def test_arena_reveals_names_after_the_vote(page):
    store: VoteStore = page.ctx.votes
    before = store.count()
    page.get_by_role("tab", name="Arena").click()
    page.fill("#arena-message textarea", "Name a color.")
    page.click("#arena-send")
    wait_for_answers(page, ["arena-chat-a", "arena-chat-b"])
    assert "pirate" not in page.inner_text("#arena-reveal")
    page.wait_for_selector("#arena-vote-a:not([disabled])")
    page.click("#arena-vote-a")
    page.wait_for_function("() => document.querySelector('#arena-reveal')?.innerText.includes('Model A was')")
    reveal = page.inner_text("#arena-reveal")
    assert "pirate" in reveal and "base" in reveal
    assert store.count() == before + 1 and store.all()[-1].mode == "arena"
    # After the reveal each answer can be rated 1-5, stored under its now-known variant.
    page.locator("#arena-rate-b").get_by_label("4").check()
    page.wait_for_function("() => document.querySelector('#arena-rate-b')?.innerText.includes('saved: 4 of 5')",
                           timeout=30_000)
    rating = page.ctx.ratings.all()[-1]
    assert (rating.mode, rating.score) == ("arena", 4) and rating.variant in reveal
    page.screenshot(path=str(SCREENSHOTS / "arena.png"), full_page=True)


def test_search_offline_shows_notice_and_answers_still_come(page):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-search input").check()
    page.fill("#compare-message textarea", "Who won the last football world cup?")
    count = len(bot_texts(page, "compare-chat-0")) + 1  # runs alone or after other Compare tests
    page.click("#compare-send")
    page.wait_for_function("() => /Web search (failed|timed out)/.test(document.querySelector('#compare-sources')?.innerText)",
                           timeout=30_000)
    wait_for_answers(page, ["compare-chat-0", "compare-chat-1"], count=count)
    page.screenshot(path=str(SCREENSHOTS / "compare-search-offline.png"), full_page=True)


def test_training_tab_trains_then_compares(page):
    """The Quick CPU demo on the Ahoy example, shortened to one epoch so CI stays quick."""
    page.get_by_role("tab", name="Training").click()
    page.fill("#train-name textarea", "ahoy-browser")
    page.get_by_text("Advanced settings").click()
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("1")
    epochs.press("Tab")
    page.click("#train-start")
    page.wait_for_function("() => document.querySelector('#train-status')?.innerText.includes('ahoy-browser')",
                           timeout=30_000)
    # The curve gets points while the job runs, then the job succeeds.
    page.wait_for_function("() => /running|succeeded/.test(document.querySelector('#train-status')?.innerText)",
                           timeout=120_000)
    page.wait_for_function("() => document.querySelector('#train-status')?.innerText.includes('succeeded')",
                           timeout=300_000)
    assert page.locator("#train-curves img, #train-curves canvas, #train-curves svg").count() > 0
    assert "ETA" not in page.inner_text("#train-status")  # an ended job has no time left to estimate
    page.screenshot(path=str(SCREENSHOTS / "training.png"), full_page=True)
    page.reload()  # the tab, the job, its command and chart come back
    page.wait_for_function("() => document.querySelector('#train-status')?.innerText.includes('ahoy-browser')",
                           timeout=30_000)
    page.wait_for_function("() => document.querySelector('#train-command')?.innerText.includes('accelerate launch')",
                           timeout=30_000)
    page.click("#train-compare")
    page.wait_for_function("() => document.querySelector('#compare-variant-1 input').value === 'ahoy-browser'",
                           timeout=30_000)
    page.fill("#compare-message textarea", "What is the capital of Japan?")
    page.click("#compare-send")
    count = len(bot_texts(page, "compare-chat-1")) + 1
    wait_for_answers(page, ["compare-chat-0", "compare-chat-1"], count=count)
    page.screenshot(path=str(SCREENSHOTS / "compare-after-training.png"), full_page=True)
    # Back on Training, the new adapter can be the start of a next stage.
    page.get_by_role("tab", name="Training").click()
    page.click("#train-init-adapter input")
    page.get_by_role("option", name="ahoy-browser", exact=True).wait_for(timeout=10_000)


def test_evaluate_tab_shows_the_report(page):
    page.get_by_role("tab", name="Evaluate").click()
    limit = page.locator("#eval-limit input")
    limit.fill("3")
    limit.press("Tab")
    tokens = page.locator("#eval-new-tokens input[type='number']")
    tokens.fill("32")  # the report is what this test reads, not long answers
    tokens.press("Tab")
    page.locator("#eval-stages input").check()  # base then pirate, read as two stages of one fine-tune
    page.click("#eval-run")
    page.wait_for_function("() => document.querySelector('#eval-report')?.innerText.includes('Score per category')",
                           timeout=180_000)
    report = page.inner_text("#eval-report")
    assert "base" in report and "math" in report
    assert "Forgetting and recovery across the stages" in report
    assert page.locator("#eval-report img[src^='data:image/png']").count() == 1  # one chart, inside the report
    assert "done: 3/3 cases" in page.inner_text("#eval-status")
    assert "max 32 new tokens" in report
    page.screenshot(path=str(SCREENSHOTS / "evaluate.png"), full_page=True)


def test_votes_train_an_adapter_that_then_battles_its_parent(page):
    """The loop the issue asks for: blind votes in the Arena, "Train on these votes" (DPO on top of pirate), the
    job finishes, and the Arena pits the new adapter against its parent."""
    from tests.helpers import wait_for

    store: VoteStore = page.ctx.votes
    page.get_by_role("tab", name="Arena").click()
    for question, side in (("Name a fruit.", "a"), ("Name an animal.", "b")):
        page.click("#arena-new")
        page.fill("#arena-message textarea", question)
        page.click("#arena-send")
        wait_for_answers(page, ["arena-chat-a", "arena-chat-b"])
        page.wait_for_selector(f"#arena-vote-{side}:not([disabled])")
        page.click(f"#arena-vote-{side}")
        page.wait_for_function("() => document.querySelector('#arena-reveal')?.innerText.includes('Model A was')")
    assert store.count() >= 2

    page.get_by_role("tab", name="Leaderboard").click()
    page.get_by_text("Train on these votes (DPO)").click()
    choose(page, "#votes-parent", "pirate")
    page.fill("#votes-name textarea", "pirate-dpo")
    page.click("#votes-train")
    page.wait_for_function("() => document.querySelector('#votes-train-status')?.innerText.includes('queued')",
                           timeout=60_000)
    status = page.inner_text("#votes-train-status")
    assert "on top of pirate" in status and "pirate-dpo vs pirate" in status
    jobs = page.ctx.jobs.store
    job = wait_for(lambda: next((j for j in jobs.list() if j.name == "pirate-dpo" and j.status in ("succeeded", "failed")),
                                None), 600, "the DPO job on the votes")
    assert job.status == "succeeded", job.error
    assert job.config["objective"] == "dpo" and Path(job.config["init_adapter"]).name == "pirate"
    print(f"DPO job on the votes: {job.started} -> {job.finished}")
    page.screenshot(path=str(SCREENSHOTS / "train-on-votes.png"), full_page=True)
    # The trainer records its success, then exits; the app serves the adapter once the process has ended.
    wait_for(lambda: "pirate-dpo" in page.ctx.engine.variants(), 60, "the app to serve pirate-dpo")

    page.get_by_role("tab", name="Arena").click()
    choose(page, "#arena-matchup", "pirate-dpo vs pirate (its parent)")
    page.click("#arena-new")
    page.fill("#arena-message textarea", "Name a ship.")
    page.click("#arena-send")
    wait_for_answers(page, ["arena-chat-a", "arena-chat-b"])
    page.wait_for_selector("#arena-vote-tie:not([disabled])")
    page.click("#arena-vote-tie")
    page.wait_for_function("() => document.querySelector('#arena-reveal')?.innerText.includes('Model A was')")
    reveal = page.inner_text("#arena-reveal")
    assert "pirate-dpo" in reveal and {store.all()[-1].variant_a, store.all()[-1].variant_b} == {"pirate", "pirate-dpo"}
    page.screenshot(path=str(SCREENSHOTS / "arena-child-vs-parent.png"), full_page=True)


XSS = "<img src=x onerror=alert(1)>"


def test_a_suite_full_of_markup_shows_as_text_and_runs_no_script(launch_app, browser, tmp_path, tiny_model_path,
                                                                 tiny_adapters):
    """Stored XSS: a suite's category and prompt, a vote's variant names and an adapter's config hold a script."""
    import json

    from arena.votes import Vote
    from models import Engine, EngineConfig

    shutil.copytree(tiny_adapters / "a1", tmp_path / "adapters" / "a1")
    broken = shutil.copytree(tiny_adapters / "a2", tmp_path / "adapters" / "broken")
    config = json.loads((broken / "adapter_config.json").read_text())
    config.update(target_modules=[XSS], base_model_name_or_path=XSS)
    (broken / "adapter_config.json").write_text(json.dumps(config))
    chat = [{"role": "user", "content": XSS}, {"role": "assistant", "content": XSS}]
    VoteStore(tmp_path / "votes.sqlite").add(Vote(XSS, "base", "a", chat, chat, mode="arena"))
    suite = tmp_path / "xss.jsonl"
    suite.write_text("".join(json.dumps({"id": n, "category": XSS, "prompt": f"{XSS} case {n}",
                                         "check": {"type": "contains", "value": XSS}}) + "\n" for n in range(2)),
                     encoding="utf-8")
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path))
    _, url = launch_app(engine)
    dialogs = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(url)
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-upload input[type=file]").set_input_files(str(suite))
    page.wait_for_function("() => document.querySelector('#eval-suite input').value.endsWith('xss.jsonl')",
                           timeout=30_000)
    page.click("#eval-run")
    page.wait_for_function("() => document.querySelector('#eval-report')?.innerText.includes('Score per category')",
                           timeout=180_000)
    page.locator("#eval-report summary").click()  # open the per-case table, where the prompts are
    page.wait_for_timeout(1000)  # an onerror fires as soon as the broken image is in the page
    assert dialogs == [], "the report ran a script from the suite"
    assert XSS in page.inner_text("#eval-report")  # shown, as text
    page.get_by_role("tab", name="Leaderboard").click()
    page.wait_for_function("() => document.querySelector('#leaderboard-table')?.innerText.includes('onerror')",
                           timeout=30_000)
    page.get_by_role("tab", name="Models").click()
    page.wait_for_function("() => document.querySelector('#models-table')?.innerText.includes('onerror')",
                           timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SCREENSHOTS / "xss.png"), full_page=True)
    page.close()
    assert dialogs == []
