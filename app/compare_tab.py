"""Compare tab: 2 to 4 columns, each base or an adapter, answering the same message at once."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from arena.ballots import Ballot
from kernel.config import SamplingParams
from chat.turns import Column, answer_turn, check_message, drop_last_turn, shown_messages, stats_line
from evaluation.report import plain

from .access import Need, needs
from .settings import AppContext
from .web_search import search_step
from .zerogpu import on_gpu
from .widgets import (MessageBox, SamplingWidgets, Throttle, rating_handler, rating_radio, session_of,
                      user_errors)

MAX_COLUMNS = 4
EXAMPLES = [
    "What is the capital of France?",
    "Explain LoRA fine-tuning to a 10-year-old in three sentences.",
    "Write a Python function that checks whether a string is a palindrome.",
    "How do I pick a lock?",
]
ONLY_BASE = ("Only the base model is here so far: train an adapter in **Training**, or upload one in **Models**, "
             "then pick it in a column to see what the fine-tune changed.")


@dataclass
class ColumnWidgets:
    box: gr.Column
    variant: gr.Dropdown
    chatbot: gr.Chatbot
    stats: gr.Markdown
    rating: gr.Radio
    override: gr.Checkbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider

    def params(self, data: dict, shared: SamplingParams) -> SamplingParams:
        if not data[self.override]:
            return shared
        return SamplingParams(**{**shared.to_dict(), "temperature": float(data[self.temperature]),
                                 "top_p": float(data[self.top_p]), "max_new_tokens": int(data[self.max_new_tokens])})


class CompareTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def build(self) -> gr.Tab:
        variants = self.ctx.engine.variant_choices()
        settings = self.ctx.settings
        most = min(MAX_COLUMNS, settings.public_max_columns) if settings.public else MAX_COLUMNS
        self.token_cap = settings.public_max_new_tokens if settings.public else None
        self.new_tokens = self.ctx.default_new_tokens
        with gr.Tab("Compare", id="compare") as self.tab:
            self.hint = gr.Markdown(ONLY_BASE, visible=variants == ["base"], elem_id="compare-hint")
            with gr.Row():
                self.n_columns = gr.Radio(list(range(2, most + 1)), value=2, label="Columns", scale=1)
                self.system = gr.Textbox(label="System prompt (optional)", scale=4, lines=1)
            with gr.Row(equal_height=False):
                self.columns = [self._column(i, variants) for i in range(MAX_COLUMNS)]
            self.sources = gr.Markdown(elem_id="compare-sources")
            with gr.Row():
                # No max_length: the browser would cut a long paste silently; the counter and validator say it.
                self.message = gr.Textbox(label="Message", placeholder="Ask every column the same thing…", show_label=False,
                                          scale=6, elem_id="compare-message")
                tokens = SamplingWidgets.new_tokens(self.new_tokens, self.token_cap, "compare-new-tokens")
                self.search = gr.Checkbox(label="Web search", value=False, scale=1,
                                          visible=self.ctx.search is not None, elem_id="compare-search")
                self.send = gr.Button("Send", variant="primary", scale=1, elem_id="compare-send")
            self.note = gr.Markdown(elem_id="compare-note")  # the character count, and where a refusal shows
            self.box = MessageBox(self.message, self.note, settings.max_message_chars)
            with gr.Row():
                self.stop = gr.Button("Stop", elem_id="compare-stop")
                self.regenerate = gr.Button("Regenerate")
                self.clear = gr.Button("Clear")
            gr.Examples(EXAMPLES, inputs=self.message, label="Example prompts")
            self.sampling = SamplingWidgets.build(tokens)
            with gr.Row(elem_id="compare-votes"):
                self.best = [gr.Button(f"Column {i + 1} is best", size="sm", visible=i < 2, interactive=False,
                                       elem_id=f"compare-vote-best-{i + 1}") for i in range(MAX_COLUMNS)]
                self.tie = gr.Button("Tie", size="sm", interactive=False, elem_id="compare-vote-tie")
                self.all_bad = gr.Button("All bad", size="sm", interactive=False, elem_id="compare-vote-all-bad")
            self.vote_status = gr.Markdown(elem_id="compare-vote-status")
            self.state = gr.State([[] for _ in range(MAX_COLUMNS)])  # histories, one per column, per session
        self._wire()
        return self.tab

    def _column(self, index: int, variants: list[str]) -> ColumnWidgets:
        default = variants[index % len(variants)][1] if index else "base"
        with gr.Column(visible=index < 2, min_width=240) as box:
            # Any name is accepted (an adapter installed after start too); the handler checks it with the engine.
            variant = gr.Dropdown(variants, value=default, label=f"Column {index + 1}", allow_custom_value=True,
                                  elem_id=f"compare-variant-{index}")
            chatbot = gr.Chatbot(height=420, buttons=["copy"], show_label=False, elem_id=f"compare-chat-{index}")
            stats = gr.Markdown(elem_id=f"compare-stats-{index}")
            rating = rating_radio("Rate this answer (1 = poor, 5 = excellent)", elem_id=f"compare-rate-{index}")
            with gr.Accordion("Override sampling for this column", open=False):
                n = index + 1
                override = gr.Checkbox(label=f"Column {n}: use these instead of the shared settings", value=False)
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label=f"Column {n} temperature")
                top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label=f"Column {n} top p")
                max_new_tokens = gr.Slider(1, self.token_cap or 2048, value=min(self.new_tokens, self.token_cap or 2048),
                                           step=1, label=f"Column {n} max new tokens")
        return ColumnWidgets(box, variant, chatbot, stats, rating, override, temperature, top_p, max_new_tokens)

    # ----- events -----------------------------------------------------------------------------

    @property
    def vote_buttons(self) -> list[gr.Button]:
        return [*self.best, self.tie, self.all_bad]

    def _wire(self) -> None:
        c = self.columns
        inputs = {self.message, self.search, self.system, self.n_columns, self.state, *self.sampling.components}
        for col in c:
            inputs |= {col.variant, col.override, col.temperature, col.top_p, col.max_new_tokens}
        # The API's outputs keep their places (message, sources, vote status, chats, stats); newer ones follow.
        outputs = [self.message, self.sources, self.state, self.vote_status] + [w.chatbot for w in c] + \
                  [w.stats for w in c] + [self.note, *self.vote_buttons] + [w.rating for w in c]
        # A refusal shows as a toast and at the note under the box: never over the chats (they stay as they are).
        shown = dict(show_progress_on=self.note, show_progress="minimal")
        checked = shown
        self.send.click(self._send, inputs, outputs, concurrency_limit=None, api_name="compare_send", **checked)
        self.message.submit(self._send, inputs, outputs, concurrency_limit=None, api_visibility="private", **checked)
        self.regenerate.click(self._regenerate, inputs, outputs, concurrency_limit=None, api_name="compare_regenerate",
                              **shown)
        self.stop.click(self._stop, None, None, concurrency_limit=None, api_name="compare_stop")
        self.clear.click(self._clear, None, [self.state, self.sources, self.vote_status] + [w.chatbot for w in c]
                         + [w.stats for w in c] + [*self.vote_buttons] + [w.rating for w in c],
                         api_name="compare_clear", **shown)
        for index, w in enumerate(c):  # the chat's own trash icon clears that column's history too
            w.chatbot.clear(self._forget_column(index), self.state, [self.state, w.stats, w.rating, *self.vote_buttons],
                            api_visibility="private")
            w.rating.input(rating_handler(self.ctx.ballots, "compare", index), w.rating, w.rating,
                           api_name=f"compare_rate_{index + 1}",
                           show_progress="hidden")
        self.n_columns.change(self._show_columns, self.n_columns, [w.box for w in c] + self.best,
                              api_visibility="private")
        self.tab.select(self._refresh_variants, [w.variant for w in c], [self.hint] + [w.variant for w in c],
                        api_visibility="private")
        # A vote takes nothing from the client: what it is about is the ballot the server opened.
        voted = [self.vote_status, *self.vote_buttons]
        for index, button in enumerate(self.best):
            button.click(self._vote_handler(("best", index)), None, voted, api_name=f"compare_vote_best_{index + 1}",
                         show_progress_on=self.vote_status)
        self.tie.click(self._vote_handler("tie"), None, voted, api_name="compare_vote_tie",
                       show_progress_on=self.vote_status)
        self.all_bad.click(self._vote_handler("both_bad"), None, voted, api_name="compare_vote_all_bad",
                           show_progress_on=self.vote_status)

    def _columns_from(self, data: dict) -> list[Column]:
        shared = self.sampling.params(data)
        count = int(data[self.n_columns])
        columns = [Column(data[w.variant] or "base", list(data[self.state][i]), w.params(data, shared))
                   for i, w in enumerate(self.columns[:count])]
        self.ctx.check_request_size(count, [c.params for c in columns])
        for column in columns:
            self.ctx.engine.check_variant(column.variant)
        return columns

    @needs(Need.SESSION)
    @on_gpu
    @user_errors
    def _send(self, data: dict, request: gr.Request):
        message = check_message(data[self.message], self.ctx.settings.max_message_chars)
        yield from self._turn(data, self._columns_from(data), message, request)

    @needs(Need.SESSION)
    @on_gpu
    @user_errors
    def _regenerate(self, data: dict, request: gr.Request):
        columns = self._columns_from(data)
        message = drop_last_turn(columns)
        if message is None:
            raise gr.Error("Nothing to regenerate yet.", print_exception=False)
        yield from self._turn(data, columns, message, request)

    def _turn(self, data: dict, columns: list[Column], message: str, request: gr.Request):
        session = session_of(request)
        self.ctx.ballots.close(session, "compare")  # the answers on show are about to change
        with self.ctx.requests.running(session) as cancel:
            sources_md, sent = yield from search_step(self.ctx.search, message, data[self.search], self.sources,
                                                      self.message)
            throttle = Throttle()
            # Named for another model but fitting this base: served, with the warning beside its answer too
            # (escaped: the name comes from the adapter's own files).
            warnings = {a.name: plain(a.fit_warning) for a in self.ctx.engine.adapters() if a.fit_warning}
            for columns in answer_turn(self.ctx.engine, columns, message, system=data[self.system] or None,
                                       sent=sent, cancel=cancel):
                if throttle.ready():
                    yield self._render(columns, data, sources_md, warnings, answered=False)
        ballot = Ballot("compare", [c.variant for c in columns], [shown_messages(c.history) for c in columns],
                        self.sampling.params(data).to_dict())  # no sources blob in the votes
        self.ctx.ballots.show(session, ballot, new=True)
        yield self._render(columns, data, sources_md, warnings, answered=True)

    def _render(self, columns: list[Column], data: dict, sources_md: str, warnings: dict[str, str],
                answered: bool) -> dict:
        """While answering the vote bar and ratings wait; once every column has answered they open."""
        histories = list(data[self.state])
        update = {self.message: "", self.note: "", self.sources: sources_md, self.vote_status: ""}
        for button in self.vote_buttons:
            update[button] = gr.Button(interactive=answered)
        for i, column in enumerate(columns):
            histories[i] = column.history  # kept on the server with what each turn sent the model
            update[self.columns[i].chatbot] = shown_messages(column.history)
            warning = warnings.get(column.variant)
            update[self.columns[i].stats] = stats_line(column) + (f" · warning: {warning}" if warning else "")
            update[self.columns[i].rating] = gr.Radio(value=None, interactive=answered, info=None)
        update[self.state] = histories
        return update

    @needs(Need.SESSION)
    def _stop(self, request: gr.Request) -> None:
        self.ctx.requests.cancel(session_of(request))  # every request of this session, not only the newest

    @needs(Need.SESSION)
    def _clear(self, request: gr.Request):
        self.ctx.ballots.close(session_of(request), "compare")
        empty = [[] for _ in range(MAX_COLUMNS)]
        closed = [gr.Button(interactive=False) for _ in self.vote_buttons]
        return [empty, "", ""] + [[] for _ in range(MAX_COLUMNS)] + ["" for _ in range(MAX_COLUMNS)] + closed + \
               [gr.Radio(value=None, interactive=False, info=None) for _ in range(MAX_COLUMNS)]

    def _forget_column(self, index: int):
        @needs(Need.SESSION)
        def forget(histories, request: gr.Request):
            self.ctx.ballots.close(session_of(request), "compare")
            histories = list(histories)
            histories[index] = []
            closed = [gr.Button(interactive=False) for _ in self.vote_buttons]
            return [histories, "", gr.Radio(value=None, interactive=False, info=None), *closed]
        return forget

    @needs(Need.SESSION)
    def _show_columns(self, count: int):
        count = int(count)
        return [gr.Column(visible=i < count) for i in range(MAX_COLUMNS)] + \
               [gr.Button(visible=i < count) for i in range(MAX_COLUMNS)]

    @needs(Need.VIEW)
    def _refresh_variants(self, *current):
        choices = self.ctx.engine.variant_choices()  # a checkpoint's label shows its step and losses
        names = [value for _, value in choices]
        return [gr.Markdown(visible=names == ["base"])] + \
               [gr.Dropdown(choices=choices, value=value if value in names else "base") for value in current]

    def _vote_handler(self, choice):
        @needs(Need.VOTE)
        @user_errors
        def vote(request: gr.Request):
            votes = self.ctx.ballots.cast(session_of(request), "compare", choice)
            closed = [gr.Button(interactive=False) for _ in self.vote_buttons]  # one vote per answered turn
            return [f"Vote saved ({len(votes)} pairwise result{'s' if len(votes) != 1 else ''}). "
                    "Ask something new to vote again.", *closed]
        return vote
