"""Training tab: pick or upload a dataset, check it, start a LoRA job, watch it live, then compare.

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
from training.job_store import FINAL
from training.jobs import shell_command
from training.resources import check_device_memory

from .access import Need, needs
from .settings import AppContext
from .training_form import TrainingForm
from .widgets import keep_upload, user_errors

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
                self.dataset = gr.Dropdown(self._datasets(), value=self._datasets()[0], label="Dataset",
                                           allow_custom_value=True, scale=3, elem_id="train-dataset")
                self.upload = gr.File(label="…or upload JSON / JSONL / CSV", file_types=[".json", ".jsonl", ".csv"],
                                      scale=2)
            self.form = TrainingForm.build(self._adapters())
            with gr.Row():
                self.check = gr.Button("Check dataset")
                self.start = gr.Button("Start training", variant="primary", elem_id="train-start")
            self.report = gr.Markdown(elem_id="train-report")
            self.preview = gr.HTML()
            self.command = gr.Code(label="Command the job runs", language="shell", interactive=False)
            self.jobs_table = gr.Dataframe(label="Jobs", interactive=False, elem_id="train-jobs")
            with gr.Row():
                self.job = gr.Dropdown([], label="Job", scale=3, elem_id="train-job")
                self.cancel = gr.Button("Cancel")
                self.resume = gr.Button("Resume")
                self.to_compare = gr.Button("Compare with base", elem_id="train-compare")
                self.to_checkpoints = gr.Button("Compare checkpoints", elem_id="train-compare-checkpoints")
            self.status = gr.Markdown(elem_id="train-status")
            self.curves = gr.LinePlot(x="step", y="loss", color="split", title="Loss", elem_id="train-curves",
                                      x_title="step", y_title="loss")
            self.log = gr.Code(label="Log tail", interactive=False, lines=12)
            self.timer = gr.Timer(2.0, active=self.ctx.jobs is not None)
        self._wire()
        return self.tab

    def _wire(self) -> None:
        form_inputs = {self.dataset, *self.form.components}
        self.upload.upload(self._store_upload, self.upload, self.dataset, api_name="train_upload")
        self.check.click(self._check, form_inputs, [self.report, self.preview], api_name="train_check")
        self.start.click(self._start, form_inputs, [self.report, self.command, self.job], api_name="train_start")
        watched = [self.jobs_table, self.job, self.status, self.curves, self.log]
        self.timer.tick(self._watch, self.job, watched, api_visibility="private", show_progress="hidden")
        self.job.change(self._watch, self.job, watched, api_visibility="private")
        self.cancel.click(self._cancel, self.job, self.status, api_name="train_cancel")
        self.resume.click(self._resume, self.job, [self.status, self.job], api_name="train_resume")
        # Refreshed when opened, not when the tab is selected: an update racing the user's first edits on
        # the tab lost them (seen in the browser test: Epochs 1 went back to 5).
        start_from = self.form.widgets["init_adapter"]
        start_from.focus(self._start_from_choices, None, start_from, api_visibility="private")
        self.to_compare.click(self._compare_with_base, self.job,
                              [self.tabs, self.compare.n_columns, self.compare.columns[0].variant,
                               self.compare.columns[1].variant], api_name="train_compare")
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

    def _datasets(self) -> list[str]:
        uploaded = sorted(str(p) for p in self.datasets_dir.glob("*") if p.suffix in DATASET_SUFFIXES)
        return [str(p) for p in sorted(EXAMPLES.glob("*.json"))] + uploaded

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
        if cfg.init_adapter:  # an adapter from an extra --adapters-dir: the job needs its folder, not its name
            info = next((a for a in self.ctx.engine.adapters() if a.name == cfg.init_adapter), None)
            if info is not None and info.path.parent != self.ctx.engine.config.paths.adapters:
                cfg.init_adapter = str(info.path)
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
        result = check_dataset(cfg, self.ctx.engine.config.data_dir, tokenizer=self.ctx.engine.tokenizer)
        check_device_memory(cfg, self.ctx.engine)
        job = self.ctx.jobs.submit(cfg)
        note = f"Job **{job.id}** queued for adapter **{cfg.name}**.\n\n{result.markdown}"
        return note, shell_command(job.command), gr.Dropdown(choices=self._job_ids(), value=job.id)

    # ----- jobs -----------------------------------------------------------------------------------

    def _job_ids(self) -> list[str]:
        return [job.id for job in self.ctx.jobs.store.list(50)]

    @needs(Need.OPERATOR, TRAINING)
    def _watch(self, job_id: str | None):
        store = self.ctx.jobs.store
        jobs = store.list(50)
        table = pd.DataFrame([self._job_row(j) for j in jobs], columns=JOB_COLUMNS)
        job_id = job_id or (jobs[0].id if jobs else None)
        choices = gr.Dropdown(choices=[j.id for j in jobs], value=job_id)
        if job_id is None:
            return table, choices, "No jobs yet.", None, ""
        job = store.get(job_id)
        return table, choices, self._status(job), self._curves(store.read_metrics(job_id)), store.read_log_tail(job_id, 40)

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

    def _status(self, job) -> str:
        progress = self.ctx.jobs.store.read_progress(job.id) or {}
        parts = [f"**{job.name}** · {job.status}"]
        if progress:
            eta = progress.get("eta_seconds")
            parts += [f"step {progress.get('step')}/{progress.get('total_steps')}", f"epoch {progress.get('epoch')}",
                      f"ETA {eta:.0f} s" if eta is not None else "ETA …",
                      f"{progress.get('tokens_per_second') or 0:.0f} tokens/s", f"{progress.get('memory_mb', 0):.0f} MB"]
        text = " · ".join(parts)
        if job.error:
            text += f"\n\n**Error:** {job.error}"
        return text + f"\n\n`{shell_command(job.command)}`"

    @staticmethod
    def _curves(metrics: list[dict]) -> pd.DataFrame:
        rows = [{"step": m["step"], "loss": m["loss"], "split": "train"} for m in metrics if "loss" in m]
        rows += [{"step": m["step"], "loss": m["eval_loss"], "split": "validation"} for m in metrics if "eval_loss" in m]
        return pd.DataFrame(rows, columns=["step", "loss", "split"])

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
        if job.name not in variants:
            raise ArenaError(f"adapter '{job.name}' is not ready: the job is {job.status}")
        return (gr.Tabs(selected="compare"), 2, gr.Dropdown(choices=variants, value="base"),
                gr.Dropdown(choices=variants, value=job.name))
