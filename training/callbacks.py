"""Trainer callback that reports progress and metrics to the job folder and honours cancel requests."""
from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

LOSS_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm")


def memory_mb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.memory_allocated() / 2**20, 1)
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


class ProgressCallback(TrainerCallback):
    """Writes progress.json and metrics.jsonl through a JobReporter (None: headless, log only)."""

    def __init__(self, reporter=None, tokens_per_step: float = 0.0, cancel_flag=None, metric_keys=LOSS_KEYS):
        self.reporter = reporter
        self.metric_keys = metric_keys  # which logged values go to metrics.jsonl (preference jobs add rewards)
        self.cancel_flag = cancel_flag  # every rank checks the flag file, so all stop together
        self.tokens_per_step = tokens_per_step
        self.cancelled = False
        self.start = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.first_step = state.global_step  # > 0 when resuming
        self._progress(state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._progress(state)
        if self.cancel_flag is not None and self.cancel_flag.exists():
            # Save where we are so a resume continues from here, then stop cleanly.
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0, 3), "time": time.time()}
        for key in self.metric_keys:
            if key in logs:
                record[key] = logs[key]
        record["memory_mb"] = memory_mb()
        if self.reporter is not None:
            self.reporter.metric(record)
        else:
            print({k: v for k, v in record.items() if k != "time"}, flush=True)

    def _progress(self, state) -> None:
        if self.reporter is None:
            return
        done = state.global_step - self.first_step
        elapsed = time.time() - self.start
        per_step = elapsed / done if done else None
        remaining = max(0, state.max_steps - state.global_step)
        self.reporter.progress({
            "step": state.global_step, "total_steps": state.max_steps, "epoch": round(state.epoch or 0, 3),
            "eta_seconds": round(per_step * remaining, 1) if per_step else None,
            "tokens_per_second": round(self.tokens_per_step / per_step, 1) if per_step else None,
            "memory_mb": memory_mb(),
        })
