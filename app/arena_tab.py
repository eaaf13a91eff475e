"""Arena tab: blind A/B battles as Chatbot Arena runs them: two random variants, names shown after the vote."""
from __future__ import annotations

import random
from pathlib import Path

import gradio as gr

from arena.ballots import Ballot
from kernel.errors import ArenaError
from chat.turns import Column, answer_turn, check_message, shown_messages, stats_line

from .access import Need, needs
from .settings import AppContext
from .web_search import search_step
from .zerogpu import on_gpu
from .widgets import (MessageBox, SamplingWidgets, Throttle, rating_handler, rating_radio, session_of,
                      user_errors)

VOTES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}
CHOICES = {"a": ("best", 0), "b": ("best", 1), "tie": "tie", "both_bad": "both_bad"}  # in arena.ballots' terms
RANDOM = "any two, at random"


def draw_pair(variants: list[str], rng: random.Random, matchup: str | None = None) -> list[str]:
    """Two different variants in random order, so neither side gives the name away; a matchup ("child\tparent")
    fixes which two, never which side."""
    if matchup and matchup != RANDOM:
        pair = matchup.split("\t")
        missing = [v for v in pair if v not in variants]
        if missing:
            raise ArenaError(f"'{missing[0]}' cannot answer now: pick another matchup")
        return rng.sample(pair, 2)
    if len(variants) < 2:
        raise ArenaError("the arena needs at least two variants: load or train an adapter first")
    return rng.sample(variants, 2)


def matchups(adapters) -> list[tuple[str, str]]:
    """(label, "child\tparent") for each loaded adapter trained here on top of another (or the base): the battle
    that shows whether the new one is better than where it started."""
    loaded = {a.name for a in adapters if a.status == "loaded"}
    found = []
    for info in adapters:
        training = info.card.get("training") if isinstance(info.card, dict) else None
        if info.name not in loaded or not isinstance(training, dict):
            continue
        start = training.get("init_adapter")
        parent = Path(start).name if start else "base"
        if parent == "base" or parent in loaded:
            found.append((f"{info.name} vs {parent} (its parent)", f"{info.name}\t{parent}"))
    return found


class ArenaTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.rng = random.SystemRandom()

    def build(self) -> gr.Tab:
        with gr.Tab("Arena", id="arena") as self.tab:
            gr.Markdown("Two variants answer; their names stay hidden until you vote. "
                        "Chat for as many turns as you like, then vote.")
            with gr.Row():
                self.chat_a = gr.Chatbot(label="Model A", height=420, buttons=["copy"], elem_id="arena-chat-a")
                self.chat_b = gr.Chatbot(label="Model B", height=420, buttons=["copy"], elem_id="arena-chat-b")
            with gr.Row():
                self.stats_a = gr.Markdown(elem_id="arena-stats-a")
                self.stats_b = gr.Markdown(elem_id="arena-stats-b")
            with gr.Row():  # shown once the names are revealed: rating before would be rating blind twice
                self.rate_a = rating_radio("Rate Model A's answer (1 = poor, 5 = excellent)", visible=False,
                                           elem_id="arena-rate-a")
                self.rate_b = rating_radio("Rate Model B's answer (1 = poor, 5 = excellent)", visible=False,
                                           elem_id="arena-rate-b")
            self.sources = gr.Markdown(elem_id="arena-sources")
            cap = self.ctx.settings.public_max_new_tokens if self.ctx.settings.public else None
            with gr.Row():
                self.message = gr.Textbox(label="Message", placeholder="Ask both models…", show_label=False, scale=6,
                                          elem_id="arena-message")
                tokens = SamplingWidgets.new_tokens(self.ctx.default_new_tokens, cap, "arena-new-tokens")
                self.search = gr.Checkbox(label="Web search", value=False, scale=1,
                                          visible=self.ctx.search is not None, elem_id="arena-search")
                self.send = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
            self.note = gr.Markdown(elem_id="arena-note")
            self.box = MessageBox(self.message, self.note, self.ctx.settings.max_message_chars)
            with gr.Row(elem_id="arena-votes"):
                self.vote_buttons = {key: gr.Button(label, interactive=False, elem_id=f"arena-vote-{key}")
                                     for key, label in VOTES.items()}
            self.reveal = gr.Markdown(elem_id="arena-reveal")
            self.matchup = gr.Dropdown([RANDOM] + matchups(self.ctx.engine.adapters()), value=RANDOM,
                                       label="Battle (the next new battle): any two, or an adapter against its parent",
                                       elem_id="arena-matchup")
            with gr.Row():
                self.stop = gr.Button("Stop")
                self.new_battle = gr.Button("New battle", elem_id="arena-new")
            self.sampling = SamplingWidgets.build(tokens, label="Sampling (both sides alike)")
            # Per session, on the server only: the hidden pair and both conversations.
            self.pair = gr.State(None)
            self.histories = gr.State([[], []])
        self._wire()
        return self.tab

    def _wire(self) -> None:
        inputs = {self.message, self.search, self.pair, self.histories, self.matchup, *self.sampling.components}
        outputs = [self.message, self.pair, self.histories, self.chat_a, self.chat_b, self.stats_a, self.stats_b,
                   self.sources, *self.vote_buttons.values(), self.note]  # the API's outputs keep their places
        # A refusal shows as a toast and at the note under the box, never over the chats.
        checked = dict(show_progress_on=self.note, show_progress="minimal")
        self.send.click(self._send, inputs, outputs, concurrency_limit=None, api_name="arena_send", **checked)
        self.message.submit(self._send, inputs, outputs, concurrency_limit=None, api_visibility="private", **checked)
        self.stop.click(self._stop, None, None, concurrency_limit=None, api_name="arena_stop")
        # Refreshed when opened: an adapter trained since the page loaded is offered against its parent.
        self.matchup.focus(self._matchup_choices, None, self.matchup, api_visibility="private")
        ratings = [self.rate_a, self.rate_b]
        for key, button in self.vote_buttons.items():  # what a vote is about comes from the server's ballot
            button.click(self._vote_handler(key), None,
                         [self.reveal, self.send, self.message, *self.vote_buttons.values(), *ratings],
                         api_name=f"arena_vote_{key}", show_progress_on=self.reveal)
        for index, radio in enumerate(ratings):
            radio.input(rating_handler(self.ctx.ballots, "arena", index), radio, radio,
                        api_name=f"arena_rate_{'ab'[index]}",
                        show_progress="hidden")
        self.new_battle.click(self._new_battle, None,
                              [self.pair, self.histories, self.chat_a, self.chat_b, self.stats_a, self.stats_b,
                               self.sources, self.reveal, self.send, self.message, *self.vote_buttons.values(),
                               *ratings],
                              api_name="arena_new_battle", show_progress_on=self.reveal)

    @needs(Need.SESSION)
    @on_gpu
    @user_errors
    def _send(self, data: dict, request: gr.Request):
        session = session_of(request)
        message = check_message(data[self.message], self.ctx.settings.max_message_chars)
        new_battle = not data[self.pair]
        if not new_battle:
            self.ctx.ballots.check_going_on(session, "arena")
        # Random battles are between finished models: a run's checkpoints would crowd them out (and a matchup
        # names loaded adapters only).
        pair = data[self.pair] or draw_pair(self.ctx.engine.variants(checkpoints=False), self.rng, data[self.matchup])
        params = self.sampling.params(data)
        self.ctx.check_request_size(2, [params])
        columns = [Column(pair[0], list(data[self.histories][0]), params),
                   Column(pair[1], list(data[self.histories][1]), params)]
        with self.ctx.requests.running(session) as cancel:
            sources_md, sent = yield from search_step(self.ctx.search, message, data[self.search], self.sources,
                                                      self.message)
            throttle = Throttle()
            for columns in answer_turn(self.ctx.engine, columns, message, sent=sent, cancel=cancel):
                if throttle.ready():
                    yield self._render(pair, columns, sources_md, voting=False)
        ballot = Ballot("arena", list(pair), [shown_messages(c.history) for c in columns], params.to_dict())
        self.ctx.ballots.show(session, ballot, new=new_battle)  # no sources blob in the votes
        yield self._render(pair, columns, sources_md, voting=True)

    @needs(Need.VIEW)
    def _matchup_choices(self):
        return gr.Dropdown(choices=[RANDOM] + matchups(self.ctx.engine.adapters()))

    @needs(Need.SESSION)
    def _stop(self, request: gr.Request) -> None:
        self.ctx.requests.cancel(session_of(request))  # every request of this session, not only the newest

    def _render(self, pair, columns: list[Column], sources_md: str, voting: bool) -> dict:
        update = {
            self.message: "", self.note: "", self.pair: pair, self.histories: [c.history for c in columns],
            self.chat_a: shown_messages(columns[0].history), self.chat_b: shown_messages(columns[1].history),
            self.stats_a: stats_line(columns[0]), self.stats_b: stats_line(columns[1]),
            self.sources: sources_md,
        }
        for button in self.vote_buttons.values():
            update[button] = gr.Button(interactive=voting)
        return update

    def _vote_handler(self, key: str):
        @needs(Need.VOTE)
        @user_errors
        def vote(request: gr.Request):
            votes = self.ctx.ballots.cast(session_of(request), "arena", CHOICES[key])
            names = votes[0].variant_a, votes[0].variant_b
            reveal = (f"**{VOTES[key]}** — saved. Model A was **{names[0]}**, Model B was **{names[1]}**. "
                      "Rate each answer from 1 to 5 under the answers if you like, then press *New battle* for another round.")
            locked = [gr.Button(interactive=False) for _ in self.vote_buttons]
            ratings = [gr.Radio(value=None, visible=True, interactive=True, info=None) for _ in range(2)]
            return [reveal, gr.Button(interactive=False), gr.Textbox(interactive=False), *locked, *ratings]
        return vote

    @needs(Need.SESSION)
    def _new_battle(self, request: gr.Request):
        self.ctx.ballots.close(session_of(request), "arena")
        buttons = [gr.Button(interactive=False) for _ in self.vote_buttons]
        ratings = [gr.Radio(value=None, visible=False, interactive=False, info=None) for _ in range(2)]
        return [None, [[], []], [], [], "", "", "", "", gr.Button(interactive=True), gr.Textbox(interactive=True),
                *buttons, *ratings]
