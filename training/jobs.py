"""Training jobs: the background runner and the command line it runs; state lives in `job_store`.

As in LLaMA-Factory's runner, the UI only builds a TrainConfig and runs the very command line a user
could type (`accelerate launch ... -m training --config job.yaml ...`), and shows it. The trainer
process reports through `JobReporter`; the runner watches the process, enforces cancellation and
records how it ended. Jobs run in their own session, so restarting the app loses nothing: `start()`
re-attaches to jobs still alive and marks the dead ones failed.

Resuming: the new job's config carries extra["resume_from"] = the old job's checkpoints folder,
and its command line gets --resume.
"""
from __future__ import annotations

import logging
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from kernel.clock import utc_now_iso
from kernel.errors import ArenaError
from kernel.process import process_alive, process_create_time
from training.config import TrainConfig

from .job_store import ACTIVE, CommandBuilder, Job, JobFiles, JobStore, latest_checkpoint
from .process_watch import died_reason, last_error_line, tail_lines

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent  # holds the `training` package: the command's cwd
NO_ADAPTER = "process exited without saving the adapter"
HOOK_IDLE_S = 5.0  # how long the hook's thread waits for the next finished job before it ends


# ----- small helpers ------------------------------------------------------------------------------

def own_group(pid: int) -> int | None:
    """The process group `pid` leads (as the runner starts jobs: a session of their own), else None."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return None
    return group if group == pid and group != os.getpgid(0) else None


def send_signal(pid: int, group: int | None, sig: int) -> None:
    """To the job's whole process group (accelerate and its workers) when it has one, else to the pid."""
    try:
        if group:
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_reason(returncode: int, lines: list[str]) -> str:
    """Why a process ended with a non-zero code; a signal (here or under accelerate) means it died."""
    if returncode < 0 or any("died with <Signals." in line for line in lines[-5:]):
        return died_reason(lines)
    return last_error_line(lines) or f"the training process exited with code {returncode}; see the log"


# ----- the command line ---------------------------------------------------------------------------

def job_command(job: Job, data_dir: str | Path, num_processes: int = 1) -> list[str]:
    """What runs a job: `accelerate launch` running the `training` module (`-m` after its options).
    Mixed precision is "no" here because the trainer chooses its own dtype (bf16 on CUDA)."""
    # Without --multi_gpu, accelerate quietly runs one process; with it, CPUs use torchrun over gloo.
    several = ["--multi_gpu"] if num_processes > 1 else []
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
               *several, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "training", "--config", str(JobFiles.of(data_dir, job.id).config),
               "--job-id", job.id, "--data-dir", str(data_dir)]
    return command + ["--resume"] if job.resume_of else command


def shell_command(command: list[str]) -> str:
    """The command as a user would type it, quoted for a shell."""
    if command[1:3] == ["-m", "accelerate.commands.launch"]:
        return "accelerate launch " + shlex.join(command[3:])
    return shlex.join(command)


# ----- the runner ---------------------------------------------------------------------------------

@dataclass
class Watch:
    """A job process being watched: with its Popen when this runner started it, else by pid alone."""

    job_id: str
    pid: int
    pid_started: float | None
    process: subprocess.Popen | None = None
    group: int | None = None  # its own process group, to signal accelerate and the workers together
    signalled: int | None = None  # the last signal sent to enforce a cancel

    def exited(self) -> tuple[bool, int | None]:
        """(ended?, exit code); the code is unknown (None) for a process another app instance started."""
        if self.process is not None:
            code = self.process.poll()
            return code is not None, code
        return not process_alive(self.pid, self.pid_started), None


class FinishedHook:
    """Calls the app's hook for each finished job, in the order they finished, on a thread of its own: the hook
    may wait long (reloading an adapter waits for the device while a generation runs), and meanwhile the
    scheduler must go on starting jobs and enforcing cancels."""

    def __init__(self, hook: Callable[[Job], None]):
        self.hook = hook
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def send(self, job: Job) -> None:
        with self._lock:
            self._jobs.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="training-jobs-finished", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=HOOK_IDLE_S)
            except queue.Empty:
                with self._lock:  # send() starts a new thread for a job that comes after this check
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            try:
                self.hook(job)
            except Exception:  # the app's hook failing must not stop later notices
                log.exception("on_finished hook failed for training job %s", job.id)


class JobRunner:
    """Starts queued jobs in the background, at most `max_parallel` at once, and records how they end."""

    def __init__(self, data_dir: str | Path, max_parallel: int = 1, num_processes: int = 1,
                 command_builder: CommandBuilder | None = None, on_finished: Callable[[Job], None] | None = None,
                 cancel_grace_s: float = 30.0, kill_grace_s: float = 5.0, poll_interval_s: float = 0.5):
        self.store = JobStore(data_dir)
        self.max_parallel = max_parallel
        self.command_builder = command_builder or partial(job_command, num_processes=num_processes)
        self.on_finished = FinishedHook(on_finished) if on_finished is not None else None
        self.cancel_grace_s, self.kill_grace_s = cancel_grace_s, kill_grace_s
        self.poll_interval_s = poll_interval_s
        self._watches: dict[str, Watch] = {}  # only the scheduler thread touches it
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Mark jobs that died while no app watched them, then schedule (re-attaching to live ones)."""
        if self._thread and self._thread.is_alive():
            return
        for job_id in self.store.reconcile():
            log.warning("training job %s had died while the app was not running; marked failed", job_id)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="training-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling; running jobs keep running and the next start() re-attaches to them."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def submit(self, config: TrainConfig, resume_of: str | None = None) -> Job:
        busy = [j.id for j in self.store.with_status(*ACTIVE) if j.name == config.name]
        if busy:
            raise ArenaError(f"adapter '{config.name}' is already being trained (job {busy[0]}); "
                             "wait for it or cancel it first")
        job = self.store.create(config, self.command_builder, resume_of)
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled at once. Running: raise the CANCEL flag; the scheduler kills it after the grace."""
        if self.store.finish(job_id, "cancelled", from_statuses=("queued",)):
            return self._notify(self.store.get(job_id))
        job = self.store.get(job_id)
        if job.status != "running":
            raise ArenaError(f"job {job_id} has already ended ({job.status})")
        flag = self.store.files(job_id).cancel_flag
        if not flag.exists():  # its age is the time of the first request
            flag.write_text(utc_now_iso() + "\n", encoding="utf-8")
        self._wake.set()
        return job

    def resume(self, job_id: str) -> Job:
        """A new job with the same config, continuing from the old job's newest checkpoint."""
        old = self.store.get(job_id)
        if old.status not in ("failed", "cancelled"):
            raise ArenaError(f"job {job_id} is {old.status}: only a failed or cancelled job can be resumed")
        checkpoints = self.store.files(job_id).checkpoints
        if latest_checkpoint(checkpoints) is None:
            raise ArenaError(f"job {job_id} saved no checkpoint to resume from; start it again instead")
        config = old.train_config()
        config = config.replace(extra={**config.extra, "resume_from": str(checkpoints)})
        return self.submit(config, resume_of=job_id)

    # the scheduler thread

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a bad tick (disk full, locked file) must not end scheduling for good
                log.exception("training job scheduler")
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def _tick(self) -> None:
        self._attach_unwatched()
        for watch in list(self._watches.values()):
            ended, code = watch.exited()
            if ended:
                del self._watches[watch.job_id]
                self._settle(watch, code)
            else:
                self._enforce_cancel(watch)
        self._start_queued()

    def _attach_unwatched(self) -> None:
        """Watch running jobs this runner did not start: an earlier app's, or one run by hand."""
        for job in self.store.with_status("running"):
            if job.id not in self._watches and job.pid and process_alive(job.pid, job.pid_started):
                self._watches[job.id] = Watch(job.id, job.pid, job.pid_started, group=own_group(job.pid))

    def _start_queued(self) -> None:
        free = self.max_parallel - len(self.store.with_status("running"))
        for job in self.store.with_status("queued")[:max(0, free)]:
            if self.store.claim(job.id):
                self._launch(job)

    def _launch(self, job: Job) -> None:
        files = self.store.files(job.id)
        try:
            with open(files.log, "ab") as log_file:
                log_file.write(f"# {utc_now_iso()} $ {shell_command(job.command)}\n".encode())
                log_file.flush()
                process = subprocess.Popen(job.command, stdout=log_file, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as exc:
            self.store.finish(job.id, "failed", f"could not start the training command: {exc.strerror or exc}")
            self._notify(self.store.get(job.id))
            return
        started = process_create_time(process.pid)
        self.store.mark_running(job.id, process.pid, started)
        self._watches[job.id] = Watch(job.id, process.pid, started, process, group=process.pid)

    def _enforce_cancel(self, watch: Watch) -> None:
        """After the grace the trainer had to stop cleanly: SIGTERM its group, then SIGKILL."""
        try:
            waited = time.time() - self.store.files(watch.job_id).cancel_flag.stat().st_mtime
        except FileNotFoundError:
            return
        if waited >= self.cancel_grace_s + self.kill_grace_s:
            sig = signal.SIGKILL
        elif waited >= self.cancel_grace_s:
            sig = signal.SIGTERM
        else:
            return
        if watch.signalled != sig and (watch.process or process_alive(watch.pid, watch.pid_started)):
            log.warning("training job %s ignored its cancel request; sending %s", watch.job_id, sig.name)
            send_signal(watch.pid, watch.group, sig)
            watch.signalled = sig

    def _settle(self, watch: Watch, code: int | None) -> None:
        """Record how a job ended, unless the trainer already did; the log is complete only now."""
        if watch.group:  # leftovers (a worker that ignored SIGTERM) must not keep holding the GPU
            send_signal(watch.pid, watch.group, signal.SIGKILL)
        job = self.store.get(watch.job_id)
        lines = tail_lines(self.store.files(job.id).log)
        status, error = self._outcome(job, watch, code, lines)
        changes = {"log_tail": "\n".join(lines)}
        if self.store.finish(job.id, status, error) and status == "succeeded":
            changes["adapter_path"] = str(self._adapter_dir(job))
        self._notify(self.store.update(job.id, **changes))

    def _outcome(self, job: Job, watch: Watch, code: int | None, lines: list[str]) -> tuple[str, str | None]:
        if self.store.files(job.id).cancel_flag.exists():
            forced = f"did not stop within {self.cancel_grace_s:g} s of the cancel request, so it was killed"
            return "cancelled", forced if watch.signalled else None
        if code is None:
            return "failed", died_reason(lines)
        if code != 0:
            return "failed", exit_reason(code, lines)
        if self._adapter_dir(job).is_dir():
            return "succeeded", None
        return "failed", NO_ADAPTER

    def _adapter_dir(self, job: Job) -> Path:
        return self.store.paths.adapter(job.name)

    def _notify(self, job: Job) -> Job:
        if self.on_finished is not None:
            self.on_finished.send(job)  # never run here: the scheduler thread must not wait for the hook
        return job
