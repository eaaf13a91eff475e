"""Training tab: pick or upload a dataset, check it, start a job, watch it live, compare answers and cost.

The tab only builds a TrainConfig and hands it to the JobRunner, which runs the same
`accelerate launch -m training ...` command a user could type; the command is shown.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from kernel.errors import ArenaError
from kernel.paths import owned_file
from models.adapters import validate_name
from models.discovery import checkpoints_in
from training.check import check_dataset
from training.cost import cost_frame, job_cards
from training.job_store import FINAL
from training.jobs import shell_command
from training.loss_chart import loss_figure
from training.preference import drift_warning
from training.resources import check_device_memory

from .access import Need, needs
from .settings import AppContext
from .training_form import TrainingForm, adapter_source, few_epochs_warning
from .widgets import keep_upload, remember_tab_js, user_errors

EXAMPLES = Path(__file__).resolve().parent.parent / "training" / "examples"
JOB_COLUMNS = ["id", "name", "status", "progress", "created", "error"]
DATASET_SUFFIXES = (".json", ".jsonl", ".csv")
TRAINING = "training"  # what a public server refuses, in its one-line refusal


class TrainingTab:
    def __init__(self, ctx: AppContext, tabs: gr.Tabs, compare):
        self.ctx = ctx
        self.tabs = tabs  # to switch to Compare
        self.compare = compare  # its column dropdowns get base + the new adapter
        self.datasets_dir = ctx.engine.config.paths.datasets
        self._ended_progress: dict[str, str] = {}  # job id -> its last progress cell, for ended jobs

    def build(self) -> gr.Tab:
        with gr.Tab("Training", id="training", visible=self.ctx.jobs is not None) as self.tab:
            gr.Markdown("Train a LoRA adapter on the served base model. Jobs run in the background as separate "
                        "processes; closing the page or restarting the app does not stop them.")
            with gr.Row():
                self.dataset = gr.Dropdown(self._datasets(), value=self._datasets()[0][1], label="Dataset",
                                           allow_custom_value=True, scale=3, elem_id="train-dataset")
                self.upload = gr.File(label="…or upload JSON / JSONL / CSV", file_types=[".json", ".jsonl", ".csv"],
                                      scale=2)
            self.form = TrainingForm.build(self._adapters())
            with gr.Row():
                self.check = gr.Button("Check dataset")
                self.start = gr.Button("Start training", variant="primary", elem_id="train-start")
                # Asked for only when the name is taken: training under it moves the old adapter to the trash.
                self.replace = gr.Checkbox(False, label="Replace the adapter of this name (the old one goes to the "
                                           "trash folder)", visible=False, elem_id="train-replace")
            self.report = gr.Markdown(elem_id="train-report")
            self.preview = gr.HTML()
            self.command = gr.Code(label="Command the job runs", language="shell", interactive=False,
                                   elem_id="train-command")
            self.jobs_table = gr.Dataframe(label="Jobs", interactive=False, elem_id="train-jobs")
            with gr.Row():
                self.job = gr.Dropdown([], label="Job", scale=3, elem_id="train-job")
                self.cancel = gr.Button("Cancel")
                self.resume = gr.Button("Resume")
                self.to_compare = gr.Button("Compare with base", elem_id="train-compare")
                self.to_checkpoints = gr.Button("Compare checkpoints", elem_id="train-compare-checkpoints")
            self.status = gr.Markdown(elem_id="train-status")
            self.curves = gr.Plot(show_label=False, elem_id="train-curves")
            self.rewards = gr.LinePlot(x="step", y="value", color="series", elem_id="train-rewards", visible=False,
                                       title="Preference: rewards of the chosen and rejected answers, margin, accuracy",
                                       x_title="step", y_title="reward / accuracy")
            self.log = gr.Code(label="Log tail", interactive=False, lines=12)
            with gr.Accordion("Cost: what the jobs took (LoRA r=8/16/64, rsLoRA, DoRA, QLoRA, full)", open=False):
                with gr.Row():
                    # Choices are refreshed when opened; ids are checked by the handler (custom values allowed)
                    self.cost_jobs = gr.Dropdown([], multiselect=True, scale=4, elem_id="train-cost-jobs",
                                                 allow_custom_value=True, label="Succeeded jobs to compare")
                    self.cost_show = gr.Button("Compare cost")
                self.cost_table = gr.Dataframe(label="Cost", interactive=False, elem_id="train-cost")
            self.timer = gr.Timer(2.0, active=self.ctx.jobs is not None)
            self.drawn = gr.State(None)  # (job, metrics lines) the chart on the page shows: redrawn only on change
        self._wire()
        return self.tab

    def _wire(self) -> None:
        form_inputs = {self.dataset, *self.form.components}
        self.upload.upload(self._store_upload, self.upload, self.dataset, api_name="train_upload",
                           show_progress_on=self.report)
        self.check.click(self._check, form_inputs, [self.report, self.preview], api_name="train_check",
                         show_progress_on=self.report)
        self.start.click(self._start, form_inputs | {self.replace}, [self.report, self.command, self.job, self.replace],
                         api_name="train_start", show_progress_on=self.report)
        watched = [self.jobs_table, self.job, self.status, self.curves, self.rewards, self.log, self.command, self.drawn]
        self.timer.tick(self._watch, [self.job, self.drawn], watched, api_visibility="private", show_progress="hidden")
        self.job.change(self._watch, [self.job, self.drawn], watched, api_visibility="private", show_progress="hidden")
        self.cancel.click(self._cancel, self.job, self.status, api_name="train_cancel", show_progress_on=self.status)
        self.resume.click(self._resume, self.job, [self.status, self.job], api_name="train_resume",
                          show_progress_on=self.status)
        # Refreshed when opened, not when the tab is selected: an update racing the user's first edits on
        # the tab lost them (seen in the browser test: Epochs 1 went back to 5).
        start_from = self.form.widgets["init_adapter"]
        start_from.focus(self._start_from_choices, None, start_from, api_visibility="private")
        self.cost_jobs.focus(self._cost_choices, None, self.cost_jobs, api_visibility="private")
        self.cost_show.click(self._cost, self.cost_jobs, self.cost_table, api_name="train_cost")
        self.to_compare.click(self._compare_with_base, self.job,
                              [self.tabs, self.compare.n_columns, self.compare.columns[0].variant,
                               self.compare.columns[1].variant], api_name="train_compare",
                              show_progress_on=self.status).success(None, js=remember_tab_js("compare"))
        self.to_checkpoints.click(self._compare_checkpoints, self.job,
                                  [self.tabs, self.compare.n_columns, *(c.variant for c in self.compare.columns)],
                                  api_name="train_compare_checkpoints")

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _compare_checkpoints(self, job_id: str | None):
        """Open Compare with the job's kept checkpoints (spread over the run when it kept more than fit)."""
        if not job_id:
            raise ArenaError("pick a job first")
        folder = self.ctx.jobs.store.files(self.ctx.jobs.store.get(job_id).id).checkpoints
        self.ctx.engine.rescan()
        columns = self.compare.columns
        chosen = checkpoints_in(self.ctx.engine.adapters(), folder, len(columns))
        if not chosen:
            raise ArenaError(f"job {job_id} kept no checkpoints: set 'keep checkpoints' to 0 to keep every one")
        choices = self.ctx.engine.variant_choices()
        values = chosen if len(chosen) > 1 else ["base", *chosen]
        return (gr.Tabs(selected="compare"), len(values),
                *(gr.Dropdown(choices=choices, value=values[i] if i < len(values) else "base")
                  for i in range(len(columns))))

    # ----- datasets -------------------------------------------------------------------------------

    @needs(Need.VIEW)
    def _start_from_choices(self):
        return self.form.adapter_choices(self._adapters())

    def _adapters(self) -> list[str]:
        return [a.name for a in self.ctx.engine.adapters() if a.status != "failed"]

    def _datasets(self) -> list[tuple[str, str]]:
        """(name relative to the project, path) for the bundled examples and DATA/datasets."""
        uploaded = sorted(p for p in self.datasets_dir.glob("*") if p.suffix in DATASET_SUFFIXES)
        return [(self.ctx.relative_name(p), str(p)) for p in [*sorted(EXAMPLES.glob("*.json")), *uploaded]]

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _store_upload(self, file):
        target = keep_upload(file, self.datasets_dir)
        return gr.Dropdown(choices=self._datasets(), value=str(target))

    def _config(self, data: dict):
        if not data[self.dataset]:
            raise ArenaError("pick or upload a dataset first")
        dataset = owned_file(data[self.dataset], self.ctx.owned_folders, "dataset", DATASET_SUFFIXES)
        cfg = self.form.config(data, str(dataset), base=self.ctx.engine.config.base)
        cfg.init_adapter = adapter_source(self.ctx.engine, cfg.init_adapter)
        return cfg

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _check(self, data: dict):
        result = check_dataset(self._config(data), self.ctx.engine.config.data_dir, tokenizer=self.ctx.engine.tokenizer)
        return result.markdown, result.preview_html

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _start(self, data: dict):
        cfg = self._config(data)
        validate_name(cfg.name)
        question = self._name_taken(cfg.name, bool(data[self.replace]))
        if question:  # asked, not refused: the checkbox appears beside Start
            return question, gr.skip(), gr.skip(), gr.Checkbox(visible=True, value=False)
        result = check_dataset(cfg, self.ctx.engine.config.data_dir, tokenizer=self.ctx.engine.tokenizer)
        check_device_memory(cfg, self.ctx.engine)
        job = self.ctx.jobs.submit(cfg)
        lines = [f"Job **{job.id}** queued for adapter **{cfg.name}**.", few_epochs_warning(cfg), result.markdown]
        return ("\n\n".join(line for line in lines if line), shell_command(job.command),
                gr.Dropdown(choices=self._job_ids(), value=job.id), gr.Checkbox(visible=False, value=False))

    def _name_taken(self, name: str, replace: bool) -> str:
        """'' when training may save under `name`; else what to ask (or why it cannot be replaced)."""
        own = self.ctx.engine.config.paths.adapter(name)
        other = next((a for a in self.ctx.engine.adapters() if a.name == name and a.path.parent != own.parent), None)
        if other is not None:
            raise ArenaError(f"an adapter named '{name}' is served from another folder ({other.path.parent}): "
                             f"pick another name, such as '{self._free_name(name)}'")
        if not own.exists() or replace:
            return ""
        return (f"An adapter named **{name}** already exists. Pick another name (**{self._free_name(name)}** is "
                f"free), or tick *Replace* beside Start and press Start again: when the new one is saved, the old one "
                f"moves to `DATA/trash/{name}-<date-time>`; nothing is deleted.")

    def _free_name(self, name: str) -> str:
        taken = {a.name for a in self.ctx.engine.adapters()}
        return next(f"{name}-{n}" for n in range(2, 10_000)
                    if f"{name}-{n}" not in taken and not self.ctx.engine.config.paths.adapter(f"{name}-{n}").exists())

    # ----- jobs -----------------------------------------------------------------------------------

    def _job_ids(self) -> list[str]:
        return [job.id for job in self.ctx.jobs.store.list(50)]

    @needs(Need.OPERATOR, TRAINING)
    def _watch(self, job_id: str | None, drawn):
        """The jobs table and the picked job (after a reload: the newest), its chart redrawn only when it grew."""
        store = self.ctx.jobs.store
        jobs = store.list(50)
        table = pd.DataFrame([self._job_row(j) for j in jobs], columns=JOB_COLUMNS)
        ids = [j.id for j in jobs]
        if job_id:  # the pick stays as the page has it: this tick may have read it just before Start changed it
            choices = gr.Dropdown(choices=ids)
        else:
            job_id = ids[0] if ids else None
            choices = gr.Dropdown(choices=ids, value=job_id)
        if job_id is None:
            return table, choices, "No jobs yet.", None, gr.LinePlot(visible=False), "", "", None
        job = store.get(job_id)
        metrics = store.read_metrics(job_id)
        key = [job_id, len(metrics)]
        if drawn == key:  # nothing new: the charts on the page stay as drawn
            chart = rewards = gr.skip()
        else:
            chart, curves = loss_figure(metrics), reward_curves(metrics)
            rewards = gr.LinePlot(value=curves, visible=not curves.empty)
        return (table, choices, self._status(job, metrics), chart, rewards, store.read_log_tail(job_id, 40),
                shell_command(job.command), key)

    def _job_row(self, job) -> dict:
        return {"id": job.id, "name": job.name, "status": job.status, "progress": self._progress_cell(job),
                "created": (job.created or "")[:19], "error": job.error or ""}

    def _progress_cell(self, job) -> str:
        """'step/total'; an ended job's never changes, so it is read once, not on every 2 s tick."""
        if job.id in self._ended_progress:
            return self._ended_progress[job.id]
        progress = self.ctx.jobs.store.read_progress(job.id) or {}
        cell = f"{progress.get('step', 0)}/{progress.get('total_steps', '?')}" if progress else ""
        if job.status in FINAL:
            self._ended_progress[job.id] = cell
        return cell

    def _status(self, job, metrics: list[dict]) -> str:
        progress = self.ctx.jobs.store.read_progress(job.id) or {}
        parts = [f"**{job.name}** · {job.config.get('objective', 'sft')} · {job.status}"]
        if progress:
            eta = progress.get("eta_seconds")
            parts += [f"step {progress.get('step')}/{progress.get('total_steps')}", f"epoch {progress.get('epoch')}"]
            if job.status == "running":  # an ended job has no time left to estimate
                parts.append(f"ETA {eta:.0f} s" if eta is not None else "ETA …")
            parts += [f"{progress.get('tokens_per_second') or 0:.0f} tokens/s", f"{progress.get('memory_mb', 0):.0f} MB"]
        text = " · ".join(parts + preference_status(metrics))
        drift = drift_warning(metrics, job.config.get("objective", "sft"), float(job.config.get("beta") or 0))
        if drift:
            text += f"\n\n**Warning:** {drift}."
        if job.error:
            text += f"\n\n**Error:** {job.error}"
        for m in metrics:
            if "old_copy" in m:  # trained under a name that was taken: say where the old adapter went
                text += f"\n\nThe adapter **{job.name}** that was there before is now in `{self.ctx.relative_name(m['old_copy'])}`."
        return text

    @needs(Need.OPERATOR, TRAINING)
    def _cost_choices(self):
        jobs = self.ctx.jobs.store.with_status("succeeded")
        return gr.Dropdown(choices=[(f"{j.name} · {j.train_config().method} · {j.id}", j.id) for j in jobs])

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _cost(self, job_ids: list[str] | None):
        if not job_ids:
            raise ArenaError("pick one or more succeeded jobs first")
        cards = job_cards(self.ctx.jobs.store.get(job_id) for job_id in job_ids)
        if not cards:
            raise ArenaError("none of the picked jobs has a card left (its adapter or model was deleted)")
        return cost_frame(cards)

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _cancel(self, job_id: str | None):
        if not job_id:
            raise ArenaError("pick a job first")
        self.ctx.jobs.cancel(job_id)
        return f"Cancel requested for **{job_id}**: it saves a checkpoint and stops."

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _resume(self, job_id: str | None):
        if not job_id:
            raise ArenaError("pick a job first")
        job = self.ctx.jobs.resume(job_id)
        return f"Resuming as job **{job.id}**.", gr.Dropdown(choices=self._job_ids(), value=job.id)

    @needs(Need.OPERATOR, TRAINING)
    @user_errors
    def _compare_with_base(self, job_id: str | None):
        if not job_id:
            raise ArenaError("pick a job first")
        job = self.ctx.jobs.store.get(job_id)
        self.ctx.engine.rescan()
        variants = self.ctx.engine.variants()
        if job.train_config().method == "full" and job.status == "succeeded":
            raise ArenaError(f"'{job.name}' is a fully fine-tuned model, not an adapter: serve it as the base "
                             f"(python arena.py --base {job.name}) or evaluate it with --base {job.name}")
        if job.name not in variants:
            raise ArenaError(f"adapter '{job.name}' is not ready: the job is {job.status}")
        return (gr.Tabs(selected="compare"), 2, gr.Dropdown(choices=variants, value="base"),
                gr.Dropdown(choices=variants, value=job.name))


REWARD_SERIES = {"rewards/chosen": "chosen", "rewards/rejected": "rejected", "rewards/margins": "margin",
                 "rewards/accuracies": "accuracy"}


def reward_curves(metrics: list[dict]) -> pd.DataFrame:
    """What preference training users watch, train and validation: both rewards, their margin, the accuracy."""
    rows = []
    for m in metrics:
        for prefix, split in (("", "train"), ("eval_", "validation")):
            rows += [{"step": m["step"], "value": m[prefix + key], "series": f"{name} ({split})"}
                     for key, name in REWARD_SERIES.items() if prefix + key in m]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def preference_status(metrics: list[dict]) -> list[str]:
    """The latest reward accuracy and margin, train and validation, for the status line."""
    parts = []
    for prefix, split in (("", "train"), ("eval_", "validation")):
        last = next((m for m in reversed(metrics) if prefix + "rewards/accuracies" in m), None)
        if last is not None:
            parts.append(f"{split} accuracy {last[prefix + 'rewards/accuracies']:.2f}, "
                         f"margin {last.get(prefix + 'rewards/margins', 0):+.3f}")
    return parts
