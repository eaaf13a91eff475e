"""Evaluate tab: run base and adapters over a suite in the background, read and download the report;
make an instruction dataset with a teacher model; and the list of both kinds of run (running and past),
which a reloaded page finds again."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from evaluation.endpoints import judge_by_name
from evaluation.report import plain
from evaluation.runner import EvalConfig
from evaluation.templates import BUILTIN_TEMPLATES
from kernel.errors import ArenaError
from kernel.paths import owned_file

from .access import Need, needs
from .settings import AppContext
from .widgets import keep_upload, user_errors

SUITES = Path(__file__).resolve().parent.parent / "evaluation" / "suites"
TEMPLATES = ["review_replies", "qa_pairs", "instruction"]
EVALUATION = "evaluation"  # what a public server refuses, in its one-line refusal
GENERATION = "generating data"
RUN_COLUMNS = ["run", "kind", "status", "suite or dataset", "variants", "progress", "result", "report", "started"]
UNITS = {"evaluation": "cases", "generation": "texts"}


class EvaluateTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.uploads = ctx.engine.config.paths.uploads

    def build(self) -> gr.Tab:
        variants = self.ctx.engine.variants()
        public = self.ctx.settings.public  # every handler here is refused there: the tab is not even shown
        with gr.Tab("Evaluate", id="evaluate", visible=not public) as self.tab:
            gr.Markdown("Score the base and adapters on a test suite: per category with 95% intervals, each adapter "
                        "against the base with a significance test, and every answer side by side. Pick a file of "
                        "preference pairs (a Leaderboard export, a training job's held-out pairs) for the preference "
                        "view: how often each variant prefers the chosen answer, the first variant as the reference.")
            with gr.Row():
                self.suite = gr.Dropdown(self._suites(), value=self._suites()[0][1], label="Suite", scale=3,
                                         allow_custom_value=True, elem_id="eval-suite")
                self.upload = gr.File(label="…or upload a suite (.jsonl)", file_types=[".jsonl"], scale=2,
                                      elem_id="eval-upload")
            with gr.Row():
                # A dropdown keeps the order picked: for stages of one fine-tune that order is the training order.
                self.variants = gr.Dropdown(variants, value=variants[:2], multiselect=True, scale=3,
                                            allow_custom_value=True,  # checked by the run: adapters added later too
                                            label="Variants (in order)", elem_id="eval-variants")
                self.stages = gr.Checkbox(False, label="Stages of one fine-tune (in the order picked)",
                                          scale=1, elem_id="eval-stages")
                # Names only, never a URL: a visitor must not send the server's key (or texts) anywhere.
                self.judge = gr.Dropdown(self._judges(), value="none", allow_custom_value=True, scale=2,
                                         label="Judge (a variant, or an endpoint configured on the server)")
            with gr.Row():
                self.max_new_tokens = gr.Slider(16, 1024, value=128, step=16, label="Max new tokens", elem_id="eval-new-tokens")
                self.limit = gr.Number(value=20, precision=0, label="Cases (0 = all)", elem_id="eval-limit",
                                       info="taken in turn from each category, so a short run covers them all")
                self.run = gr.Button("Run evaluation", variant="primary", elem_id="eval-run")
            self._generate_panel()
            self._runs_panel()
            self.report = gr.HTML(elem_id="eval-report")
            self.files = gr.File(label="Download", file_count="multiple", interactive=False)
            self.shown = gr.State(None)  # [run, status, run ids in the pick] the page shows
            self.timer = gr.Timer(1.5, active=not public)
        self._wire()
        return self.tab

    def _generate_panel(self) -> None:
        with gr.Accordion("Generate data with a teacher model", open=False):
            gr.Markdown("From raw texts (CSV/JSONL column or a text file, one per line) ask a teacher for JSON, "
                        "repair and validate it, drop near-duplicates, and write a dataset the Training tab accepts. "
                        "It runs in the background and is listed under Runs, with its progress and Cancel.")
            with gr.Row():
                self.gen_input = gr.File(label="Raw texts", file_types=[".csv", ".jsonl", ".txt"], elem_id="gen-input")
                self.gen_field = gr.Textbox(value="text", label="Field")
                self.gen_template = gr.Dropdown(TEMPLATES, value="qa_pairs", label="Template", allow_custom_value=True)
                self.gen_teacher = gr.Dropdown(self._judges()[1:], value="base", allow_custom_value=True,
                                               label="Teacher (a variant, or an endpoint configured on the server)")
                self.gen_output = gr.Textbox(value="generated.json", label="Output name")
            self.gen_run = gr.Button("Generate", elem_id="gen-run")
            self.gen_status = gr.Markdown(elem_id="gen-status")

    def _runs_panel(self) -> None:
        gr.Markdown("### Runs\nEvaluations and dataset generations, running and past; pick one to see its report.")
        self.runs = gr.Dataframe(pd.DataFrame(columns=RUN_COLUMNS), interactive=False, datatype="str",
                                 show_label=False, elem_id="eval-runs", max_height=300, wrap=True,
                                 column_widths=["19%", "8%", "8%", "12%", "10%", "7%", "18%", "12%", "9%"])
        with gr.Row():
            self.pick = gr.Dropdown([], label="Run", scale=3, elem_id="eval-pick")
            self.stop = gr.Button("Cancel this run", elem_id="eval-cancel")
        self.status = gr.Markdown(elem_id="eval-status")

    def _wire(self) -> None:
        inputs = [self.suite, self.variants, self.judge, self.max_new_tokens, self.limit, self.stages]
        self.upload.upload(self._store_suite, self.upload, self.suite, api_name="eval_upload",
                           show_progress_on=self.status)
        self.run.click(self._start, inputs, [self.pick, self.status], api_name="eval_run", show_progress_on=self.status)
        self.stop.click(self._stop, self.pick, self.status, api_name="eval_stop", show_progress_on=self.status)
        watched = [self.runs, self.pick, self.status, self.report, self.files, self.shown]
        self.timer.tick(self._watch, [self.pick, self.shown], watched, api_visibility="private", show_progress="hidden")
        self.pick.input(self._watch, [self.pick, self.shown], watched, api_visibility="private", show_progress="hidden")
        self.tab.select(self._refresh_variants, None, [self.variants, self.judge, self.gen_teacher],
                        api_visibility="private")
        self.gen_run.click(self._generate, [self.gen_input, self.gen_field, self.gen_template, self.gen_teacher,
                                            self.gen_output], [self.gen_status, self.pick], api_name="generate_data",
                           show_progress_on=self.gen_status)

    def _suites(self) -> list[tuple[str, str]]:
        """(name relative to the project, path): bundled suites (starter first), then uploaded ones."""
        uploaded = sorted(self.uploads.glob("*.jsonl")) if self.uploads.is_dir() else []
        bundled = sorted(SUITES.glob("*.jsonl"), key=lambda p: (p.stem != "starter", p.name))  # starter first
        return [(self.ctx.relative_name(p), str(p)) for p in [*bundled, *uploaded, *self._pair_files()]]

    def _pair_files(self) -> list[Path]:
        """Preference pairs for the preference view: the Leaderboard's exports and preference jobs' held-out
        pairs (DATA/exports/heldout-NAME.jsonl), newest first."""
        found = list(self.ctx.engine.config.paths.exports.glob("*.jsonl"))
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:10]

    def _judges(self) -> list[str]:
        return ["none", *self.ctx.engine.variants(), *self.ctx.settings.judge_endpoints]

    @needs(Need.VIEW)
    def _refresh_variants(self):
        return (gr.Dropdown(choices=self.ctx.engine.variants()), gr.Dropdown(choices=self._judges()),
                gr.Dropdown(choices=self._judges()[1:]))

    @needs(Need.OPERATOR, EVALUATION)
    @user_errors
    def _store_suite(self, file):
        target = keep_upload(file, self.uploads)
        return gr.Dropdown(choices=self._suites(), value=str(target))

    @needs(Need.OPERATOR, EVALUATION)
    @user_errors
    def _start(self, suite, variants, judge, max_new_tokens, limit, stages=False):
        if not suite:
            raise ArenaError("pick a suite first")
        if not variants:
            raise ArenaError("pick at least one variant")
        suite_path = owned_file(suite, self.ctx.owned_folders, "suite", (".jsonl",))
        judge_name = None if judge in (None, "", "none") else judge
        judge_obj = None if judge_name is None else self._judge(judge_name)
        config = EvalConfig(suite=str(suite_path), variants=list(variants), judge=judge_name,
                            max_new_tokens=int(max_new_tokens), limit=int(limit or 0) or None, stages=bool(stages))
        task = self.ctx.evals.start(config, judge_obj)
        return (gr.Dropdown(choices=self._run_ids(), value=task.id),
                f"Started **{task.id}** on {plain(suite_path.name)} with {plain(', '.join(variants))}.")

    def _judge(self, name: str):
        return judge_by_name(name, self.ctx.engine, self.ctx.settings.judge_endpoints)

    @needs(Need.OPERATOR, EVALUATION)
    @user_errors
    def _stop(self, run_id):
        if not run_id:
            raise ArenaError("pick a run first")
        record = self.ctx.evals.cancel(run_id)
        return f"Stopping **{record.id}** after the current {UNITS[record.kind][:-1]}; what was done is kept."

    # ----- the runs list ---------------------------------------------------------------------------

    def _run_ids(self) -> list[str]:
        return [r.id for r in self.ctx.evals.runs()]

    @needs(Need.OPERATOR, EVALUATION)
    def _watch(self, run_id, shown):
        """The list, and the picked run (after a reload: the running one, else the newest); its report and
        files are sent again only when the run or its status changed.

        The pick itself is left alone once it names a run: a tick that read the pick just before Run or
        Generate set it would otherwise put the older run back (seen in CI: the status then never showed the
        new run). Its choices are sent only when the list of runs changed."""
        runs = self.ctx.evals.runs()
        table = pd.DataFrame([self._row(r) for r in runs], columns=RUN_COLUMNS)
        ids = [r.id for r in runs]
        record = next((r for r in runs if r.id == run_id), None)
        if record is not None:
            pick = gr.skip() if shown and shown[2] == ids else gr.Dropdown(choices=ids)
        else:
            record = next((r for r in runs if r.status == "running"), runs[0] if runs else None)
            if record is None:
                return table, gr.Dropdown(choices=[], value=None), "No runs yet.", gr.skip(), gr.skip(), None
            pick = gr.Dropdown(choices=ids, value=record.id)
        key = [record.id, record.status, ids]
        if shown and shown[:2] == key[:2]:
            return table, pick, self._status(record), gr.skip(), gr.skip(), key
        return table, pick, self._status(record), self._report(record), self._files(record), key

    def _row(self, r) -> list[str]:
        return [r.id, r.kind, r.status, r.title, ", ".join(r.variants), f"{r.done}/{r.total}" if r.total else "",
                r.error or r.summary, self.ctx.relative_name(r.files["report (HTML)"]) if "report (HTML)" in r.files
                else "", r.started]

    @staticmethod
    def _status(r) -> str:
        unit = UNITS[r.kind]
        head = f"**{r.id}** ({r.kind} of {plain(r.title)})"
        if r.status == "running":
            return f"{head} running: {r.done}/{r.total} {unit} ({plain(r.message)})"
        if r.status in ("failed", "interrupted"):
            return f"{head} {r.status}: {plain(r.error)}" + (f"\n\n{plain(r.summary)}" if r.summary else "")
        return f"{head} {r.status}: {r.done}/{r.total} {unit} in {r.seconds:.0f} s. {plain(r.summary)}"

    @staticmethod
    def _report(r) -> str:
        path = Path(r.files.get("report (HTML)", ""))
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    @staticmethod
    def _files(r) -> list[str] | None:
        return [path for path in r.files.values() if Path(path).is_file()] or None

    # ----- generating data ---------------------------------------------------------------------------

    @needs(Need.OPERATOR, GENERATION)
    @user_errors
    def _generate(self, file, field_name, template, teacher, output_name):
        if file is None:
            raise ArenaError("upload a file of raw texts first")
        if template not in BUILTIN_TEMPLATES:  # a template file: only from the folders the app owns
            template = str(owned_file(template, self.ctx.owned_folders, "template", (".json", ".yaml", ".yml")))
        teacher_obj = self._judge(teacher)
        source = keep_upload(file, self.uploads)
        name = Path(output_name or "generated.json").name
        output = self.ctx.engine.config.paths.dataset(name)
        task = self.ctx.evals.generate(source, field_name or "text", template, teacher_obj, teacher, output)
        return (f"Started **{task.id}**: writing {plain(self.ctx.relative_name(output))}; when it is done, pick it in "
                "the Training tab.", gr.Dropdown(choices=self._run_ids(), value=task.id))
