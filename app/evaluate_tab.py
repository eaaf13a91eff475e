"""Evaluate tab: run base and adapters over a suite in the background, read and download the report;
and make an instruction dataset with a teacher model."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from evaluation.endpoints import judge_by_name
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


class EvaluateTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.uploads = ctx.engine.config.paths.uploads

    def build(self) -> gr.Tab:
        variants = self.ctx.engine.variants()
        public = self.ctx.settings.public  # every handler here is refused there: the tab is not even shown
        with gr.Tab("Evaluate", id="evaluate", visible=not public) as self.tab:
            gr.Markdown("Score the base and adapters on a test suite: per category with 95% intervals, each adapter "
                        "against the base with a significance test, and every answer side by side.")
            with gr.Row():
                self.suite = gr.Dropdown(self._suites(), value=self._suites()[0], label="Suite", scale=3,
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
                self.max_new_tokens = gr.Slider(16, 1024, value=128, step=16, label="Max new tokens")
                self.limit = gr.Number(value=20, precision=0, label="Only the first N cases (0 = all)")
                self.run = gr.Button("Run evaluation", variant="primary", elem_id="eval-run")
                self.stop = gr.Button("Stop")
            self.status = gr.Markdown(elem_id="eval-status")
            self.report = gr.HTML(elem_id="eval-report")
            self.files = gr.File(label="Download", file_count="multiple", interactive=False)
            self.task = gr.State(None)
            self.timer = gr.Timer(1.5, active=not public)
            self._generate_panel()
        self._wire()
        return self.tab

    def _generate_panel(self) -> None:
        with gr.Accordion("Generate data with a teacher model", open=False):
            gr.Markdown("From raw texts (CSV/JSONL column or a text file, one per line) ask a teacher for JSON, "
                        "repair and validate it, drop near-duplicates, and write a dataset the Training tab accepts.")
            with gr.Row():
                self.gen_input = gr.File(label="Raw texts", file_types=[".csv", ".jsonl", ".txt"])
                self.gen_field = gr.Textbox(value="text", label="Field")
                self.gen_template = gr.Dropdown(TEMPLATES, value="qa_pairs", label="Template", allow_custom_value=True)
                self.gen_teacher = gr.Dropdown(self._judges()[1:], value="base", allow_custom_value=True,
                                               label="Teacher (a variant, or an endpoint configured on the server)")
                self.gen_output = gr.Textbox(value="generated.json", label="Output name")
            self.gen_run = gr.Button("Generate")
            self.gen_status = gr.Markdown()

    def _wire(self) -> None:
        inputs = [self.suite, self.variants, self.judge, self.max_new_tokens, self.limit, self.stages]
        self.upload.upload(self._store_suite, self.upload, self.suite, api_name="eval_upload")
        self.run.click(self._start, inputs, [self.task, self.status], api_name="eval_run")
        self.stop.click(self._stop, self.task, self.status, api_name="eval_stop")
        shown = [self.status, self.report, self.files]  # the report carries its chart
        self.timer.tick(self._watch, self.task, shown, api_visibility="private", show_progress="hidden")
        self.tab.select(self._refresh_variants, None, [self.variants, self.judge, self.gen_teacher],
                        api_visibility="private")
        self.gen_run.click(self._generate, [self.gen_input, self.gen_field, self.gen_template, self.gen_teacher,
                                            self.gen_output], self.gen_status, api_name="generate_data")

    def _suites(self) -> list[str]:
        uploaded = sorted(self.uploads.glob("*.jsonl")) if self.uploads.is_dir() else []
        bundled = sorted(SUITES.glob("*.jsonl"), key=lambda p: (p.stem != "starter", p.name))  # starter first
        return [str(p) for p in bundled] + [str(p) for p in uploaded]

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
                            max_new_tokens=int(max_new_tokens), limit=int(limit) or None, stages=bool(stages))
        task = self.ctx.evals.start(config, judge_obj)
        return task.id, f"Started **{task.id}** on {suite_path.name} with {', '.join(variants)}."

    def _judge(self, name: str):
        return judge_by_name(name, self.ctx.engine, self.ctx.settings.judge_endpoints)

    @needs(Need.OPERATOR, EVALUATION)
    def _stop(self, task_id):
        task = self.ctx.evals.get(task_id) if task_id else None
        if task is None:
            return "Nothing is running."
        task.cancel.set()
        return f"Stopping **{task.id}** after the current case; the report covers what was done."

    @needs(Need.OPERATOR, EVALUATION)
    def _watch(self, task_id):
        task = self.ctx.evals.get(task_id) if task_id else None
        if task is None:
            return gr.update(), gr.update(), gr.update()
        p = task.progress
        if task.status == "running":
            return f"**{task.id}** running: {p.done}/{p.total} cases ({p.message})", gr.update(), gr.update()
        if task.status == "failed":
            return f"**{task.id}** failed: {task.error}", "", None
        paths = task.paths
        report = Path(paths["html"]).read_text(encoding="utf-8")
        files = [str(paths[kind]) for kind in ("markdown", "html", "chart")] + [str(task.run.run_dir / "answers.jsonl")]
        return f"**{task.id}** {task.status}: {p.done}/{p.total} cases in {task.run.seconds:.0f} s.", report, files

    @needs(Need.OPERATOR, GENERATION)
    @user_errors
    def _generate(self, file, field_name, template, teacher, output_name):
        if file is None:
            raise ArenaError("upload a file of raw texts first")
        from evaluation.generate_data import generate_data

        if template not in BUILTIN_TEMPLATES:  # a template file: only from the folders the app owns
            template = str(owned_file(template, self.ctx.owned_folders, "template", (".json", ".yaml", ".yml")))
        teacher_obj = self._judge(teacher)
        source = keep_upload(file, self.uploads)
        name = Path(output_name or "generated.json").name
        output = self.ctx.engine.config.paths.dataset(name)
        report = generate_data(str(source), field_name or "text", template, teacher_obj, str(output), progress=False)
        return f"{report.summary()}\n\nWritten to `{output}`: pick it in the Training tab."
