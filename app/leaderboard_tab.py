"""Leaderboard tab: Bradley-Terry scores with bootstrap intervals, head-to-head picture, vote exports."""
from __future__ import annotations


import gradio as gr

from arena.export import export_jsonl, export_sharegpt
from arena.rating import head_to_head, head_to_head_figure, leaderboard

from .access import Need, needs
from .settings import AppContext
from .widgets import user_errors


class LeaderboardTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def build(self) -> gr.Tab:
        with gr.Tab("Leaderboard", id="leaderboard") as self.tab:
            self.summary = gr.Markdown(elem_id="leaderboard-summary")
            # Plain-text cells: a variant name comes from a vote and must never become HTML.
            self.table = gr.Dataframe(label="Scores (Bradley-Terry, Elo scale, 95% bootstrap interval)",
                                      interactive=False, datatype="str", elem_id="leaderboard-table")
            self.matrix = gr.Plot(label="Head to head: how often the row beats the column (ties count half)")
            self.refresh = gr.Button("Refresh")
            with gr.Row():
                self.export_pairs = gr.Button("Export preference pairs (JSONL)")
                self.export_sharegpt = gr.Button("Export sharegpt (dpo_en_demo form)")
            self.download = gr.File(label="Export", interactive=False)
        outputs = [self.summary, self.table, self.matrix]
        self.tab.select(self._refresh, None, outputs, api_visibility="private")
        self.refresh.click(self._refresh, None, outputs, api_name="leaderboard")
        self.export_pairs.click(self._export(export_jsonl, "jsonl"), None, self.download, api_name="export_pairs")
        self.export_sharegpt.click(self._export(export_sharegpt, "json"), None, self.download,
                                   api_name="export_sharegpt")
        return self.tab

    @needs(Need.VIEW)
    @user_errors
    def _refresh(self):
        votes = self.ctx.votes.all()
        if not votes:
            return "No votes yet: battle in the Arena or vote under Compare.", None, None
        table = leaderboard(votes)
        arena = sum(v.mode == "arena" for v in votes)
        summary = f"{len(votes)} votes ({arena} blind arena, {len(votes) - arena} from Compare)."
        return summary, table.round(3), head_to_head_figure(head_to_head(votes))

    def _export(self, writer, suffix: str):
        @needs(Need.OPERATOR, "exporting votes (every visitor's conversations)")
        @user_errors
        def export():
            votes = self.ctx.votes.all()
            path = self.ctx.engine.config.paths.votes_export(suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            result = writer(votes, path)
            gr.Info(f"{result.written} pairs written, {result.skipped} votes skipped (ties, both bad, identical answers).")
            return str(result.path)
        return export
