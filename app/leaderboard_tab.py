"""Leaderboard tab: Bradley-Terry scores with bootstrap intervals, 1-5 ratings, head-to-head picture, vote
exports, and "Train on these votes": a DPO job on the current votes, on top of a chosen adapter."""
from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from arena.export import export_jsonl, export_sharegpt, select_pairs, write_pairs_jsonl
from arena.rating import head_to_head, head_to_head_figure, leaderboard
from kernel.errors import ArenaError
from models.adapters import validate_name
from training.check import check_dataset
from training.config import TrainConfig
from training.resources import check_device_memory
from arena.ratings import rating_table

from .access import Need, needs
from .settings import AppContext
from .training_form import adapter_source
from .training_tab import TRAINING
from .widgets import user_errors

ANY = "any"  # the winner filter that keeps every decisive vote
# A DPO run on a few dozen votes: LoRA learning rates, a few passes, and the adapter it starts from as the reference.
VOTES_DPO = dict(objective="dpo", learning_rate=5e-4, epochs=3.0, batch_size=4, max_length=512, beta=0.1,
                 eval_every=10, reference="auto")
MIN_PAIRS = 2
HELD_OUT_FROM = 20  # pairs; fewer all train (a validation split of 10% would hold out nothing)
SCORE_COLUMNS = ["rank", "variant", "score", "95% interval", "battles", "wins", "losses", "ties", "win rate"]
RATING_COLUMNS = ["variant", "mean rating", "95% interval", "ratings"]
FEW_VOTES = 5  # below this many battles an interval says too little to be worth a number
FEW_RATINGS = 3


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def interval(low: float, high: float, count: int, few: int, fmt: str, what: str) -> str:
    """'980 – 1040', or a word that there is too little to tell (no zero-width interval from one vote)."""
    if count < few or math.isnan(low) or math.isnan(high) or high - low < 1e-9:
        return f"too few {what} to tell"
    return f"{low:{fmt}} – {high:{fmt}}"


def score_rows(table: pd.DataFrame) -> pd.DataFrame:
    """arena.rating.leaderboard as people read it: whole Elo points, an interval or a word, win rate in %."""
    rows = [[
        "" if pd.isna(r["rank"]) else str(r["rank"]), r["variant"],
        "" if math.isnan(r["score"]) else f"{r['score']:.0f}",
        interval(r["ci_low"], r["ci_high"], int(r["battles"]), FEW_VOTES, ".0f", "votes"),
        str(r["battles"]), str(r["wins"]), str(r["losses"]), str(r["ties"]), f"{r['win_rate'] * 100:.0f}%",
    ] for _, r in table.iterrows()]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def rating_rows(table: pd.DataFrame) -> pd.DataFrame:
    rows = [[r["variant"], f"{r['mean']:.2f}",
             interval(r["ci_low"], r["ci_high"], int(r["ratings"]), FEW_RATINGS, ".2f", "ratings"),
             str(r["ratings"])] for _, r in table.iterrows()]
    return pd.DataFrame(rows, columns=RATING_COLUMNS)


class LeaderboardTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def build(self) -> gr.Tab:
        with gr.Tab("Leaderboard", id="leaderboard") as self.tab:
            self.summary = gr.Markdown(elem_id="leaderboard-summary")
            # Plain-text cells: a variant name comes from a vote and must never become HTML.
            self.table = gr.Dataframe(pd.DataFrame(columns=SCORE_COLUMNS), interactive=False, datatype="str",
                                      label="Scores from votes (Bradley-Terry, Elo scale, 95% bootstrap interval)",
                                      elem_id="leaderboard-table")
            self.ratings = gr.Dataframe(pd.DataFrame(columns=RATING_COLUMNS), interactive=False, datatype="str",
                                        label="Ratings from 1 to 5 (mean, 95% bootstrap interval of the mean, count)",
                                        elem_id="leaderboard-ratings")
            # The figure carries its own title: a component label as well sat on top of it.
            self.matrix = gr.Plot(show_label=False, elem_id="leaderboard-matrix")
            self.refresh = gr.Button("Refresh")
            with gr.Row():
                self.export_pairs = gr.Button("Export preference pairs (JSONL)")
                self.export_sharegpt = gr.Button("Export sharegpt (dpo_en_demo form)")
            self.download = gr.File(label="Export", interactive=False)
            self._train_panel()
        outputs = [self.summary, self.table, self.ratings, self.matrix]
        self.tab.select(self._refresh, None, outputs, api_visibility="private", show_progress_on=self.summary)
        self.refresh.click(self._refresh, None, outputs, api_name="leaderboard", show_progress_on=self.summary)
        self.export_pairs.click(self._export(export_jsonl, "jsonl"), None, self.download, api_name="export_pairs")
        self.export_sharegpt.click(self._export(export_sharegpt, "json"), None, self.download,
                                   api_name="export_sharegpt")
        self.train.click(self._train_on_votes, [self.winner, self.parent, self.name], self.train_status,
                         api_name="train_on_votes")
        for dropdown in (self.winner, self.parent):  # refreshed when opened: adapters trained since the page loaded
            dropdown.focus(self._adapter_choices, None, [self.winner, self.parent], api_visibility="private")
        return self.tab

    def _train_panel(self) -> None:
        adapters = self._adapters()
        with gr.Accordion("Train on these votes (DPO)", open=False, visible=self.ctx.jobs is not None):
            gr.Markdown("A DPO job on the current votes: each decisive vote is a pair (the winner's answer chosen, "
                        "the loser's rejected); ties and \"both bad\" are left out and counted. The new adapter "
                        "continues the one picked below, which stays frozen as the reference; when the job has "
                        "finished the Arena can pit the two against each other.")
            with gr.Row():
                self.winner = gr.Dropdown([ANY, "base"] + adapters, value=ANY, label="Pairs whose winner is",
                                          elem_id="votes-winner")
                self.parent = gr.Dropdown(["base"] + adapters, value=adapters[0] if adapters else "base",
                                          label="On top of (the adapter DPO continues)", elem_id="votes-parent")
                self.name = gr.Textbox(label="New adapter name", placeholder="e.g. ahoy-dpo", elem_id="votes-name")
                self.train = gr.Button("Train on these votes", variant="primary", elem_id="votes-train")
            self.train_status = gr.Markdown(elem_id="votes-train-status")

    def _adapters(self) -> list[str]:
        return [a.name for a in self.ctx.engine.adapters() if a.status == "loaded"]

    @needs(Need.VIEW)
    def _adapter_choices(self):
        adapters = self._adapters()
        return gr.Dropdown(choices=[ANY, "base"] + adapters), gr.Dropdown(choices=["base"] + adapters)

    @needs(Need.VIEW)
    @user_errors
    def _refresh(self):
        votes = self.ctx.votes.all()
        ratings = self.ctx.ratings.all() if self.ctx.ratings is not None else []
        rated = rating_rows(rating_table(ratings)) if ratings else pd.DataFrame(columns=RATING_COLUMNS)
        rating_words = plural(len(ratings), "rating") + " from 1 to 5"
        if not votes:
            return (f"No votes yet: battle in the Arena or vote under Compare. {rating_words}.",
                    pd.DataFrame(columns=SCORE_COLUMNS), rated, None)
        arena = sum(v.mode == "arena" for v in votes)
        summary = (f"{plural(len(votes), 'vote')} ({arena} blind arena, {len(votes) - arena} from Compare); "
                   f"{rating_words}. An interval needs at least {FEW_VOTES} battles.")
        return summary, score_rows(leaderboard(votes)), rated, head_to_head_figure(head_to_head(votes))

    def _export(self, writer, suffix: str):
        @needs(Need.OPERATOR, "exporting votes (every visitor's conversations)")
        @user_errors
        def export():
            votes = self.ctx.votes.all()
            path = self.ctx.engine.config.paths.votes_export(suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            result = writer(votes, path)
            gr.Info(f"{plural(result.written, 'pair')} written, {plural(result.skipped, 'vote')} skipped "
                    "(ties, both bad, identical answers).")
            return str(result.path)
        return export

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _train_on_votes(self, winner: str | None, parent: str | None, name: str | None):
        if self.ctx.jobs is None:
            raise ArenaError(f"{TRAINING} is turned off on this server")
        name = (name or "").strip()
        validate_name(name)
        parent = None if parent in (None, "", "base") else parent
        if parent is not None:
            self.ctx.engine.check_variant(parent)
        selection = select_pairs(self.ctx.votes.all(), None if winner in (None, "", ANY) else winner)
        if len(selection.pairs) < MIN_PAIRS:
            raise ArenaError(f"{selection.summary()}: at least {MIN_PAIRS} pairs are needed to train; vote more first")
        data_dir = self.ctx.engine.config.data_dir
        dataset = write_pairs_jsonl(selection.pairs, self.ctx.engine.config.paths.votes_dataset(name))
        cfg = TrainConfig(name=name, dataset=str(dataset), base=self.ctx.engine.config.base,
                          init_adapter=adapter_source(self.ctx.engine, parent), **VOTES_DPO,
                          validation_split=0.1 if len(selection.pairs) >= HELD_OUT_FROM else 0.0,
                          extra={"parent": parent or "base", "votes": selection.summary()})
        check_dataset(cfg, data_dir, tokenizer=self.ctx.engine.tokenizer)
        check_device_memory(cfg, self.ctx.engine)
        job = self.ctx.jobs.submit(cfg)
        return (f"Job **{job.id}** queued: DPO on {selection.summary()}, on top of **{parent or 'base'}**, as "
                f"**{name}**. Follow it under Training; when it has finished, the Arena offers "
                f"*{name} vs {parent or 'base'}*.")
