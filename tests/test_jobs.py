"""Training jobs: the SQLite job store and the background runner, with real processes and files.

The real trainer is slow, so the runner runs a small fake trainer written to tmp_path instead (via
`command_builder`); its behaviour comes from the job config's extra["fake"]. The modes that report
through JobReporter import `training.job_store` (and so torch, via `models`): a few seconds each.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models import Engine, EngineConfig

from kernel.errors import ArenaError
from tests.helpers import wait_for
from training.config import TrainConfig
from training.job_store import JobStore
from training.jobs import NO_ADAPTER, JobRunner, job_command, shell_command
from kernel.process import process_alive, process_create_time
from training.process_watch import DIED, last_error_line

FAKE_TRAINER = r'''
import json, os, signal, subprocess, sys, time
from pathlib import Path

mode, job_id, data_dir = sys.argv[1:4]
job_dir = Path(data_dir) / "jobs" / job_id
if mode == "fail":
    print("loading dataset ...", flush=True)
    print("Traceback (most recent call last):\nValueError: a stack trace line", file=sys.stderr)
    print("error: something is wrong with the dataset", file=sys.stderr)
    sys.exit(1)
if mode == "exit0":  # ends cleanly but never writes an adapter
    sys.exit(0)
if mode == "sleep":  # never reports: the test kills it
    time.sleep(60)
    sys.exit(0)
if mode == "stubborn":  # like accelerate over a trainer that ignores CANCEL and SIGTERM
    ready = job_dir / "child-ready"
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN); open(sys.argv[1], 'w').close(); "
                              "time.sleep(60)", str(ready)])
    while not ready.exists():
        time.sleep(0.02)
    (job_dir / "progress.json").write_text(json.dumps({"step": 1, "child": child.pid}))
    child.wait()  # this "launcher" itself dies on SIGTERM; its child must not outlive the job

sys.path.insert(0, os.getcwd())  # the runner's cwd is the repo root
from training.job_store import JobReporter

reporter = JobReporter(data_dir, job_id)
reporter.running()
if mode in ("succeed", "succeed_after_go"):
    for step in (1, 2, 3):
        reporter.metric({"step": step, "epoch": step / 3, "loss": 1.0 / step})
        reporter.progress({"step": step, "total_steps": 3, "epoch": step / 3, "eta_seconds": 0})
    while mode == "succeed_after_go" and not (job_dir / "GO").exists():
        time.sleep(0.05)
    adapter = Path(data_dir) / "adapters" / reporter.job.name
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    print("saved adapter", flush=True)
    reporter.succeeded(adapter)
elif mode == "loop":  # honours CANCEL: checkpoint, report, exit 0
    for step in range(1, 2000):
        reporter.progress({"step": step, "total_steps": 2000})
        if reporter.cancel_requested():
            (job_dir / "checkpoints" / f"checkpoint-{step}").mkdir()
            reporter.cancelled()
            sys.exit(0)
        time.sleep(0.05)
    reporter.failed("was never cancelled")
    sys.exit(1)
'''


def fake_config(name: str, mode: str, **extra) -> TrainConfig:
    return TrainConfig(name=name, dataset="data.jsonl", extra={"fake": mode, **extra})


def wait_until_ended(store: JobStore, job_id: str, timeout: float = 20.0):
    return wait_for(lambda: (job := store.get(job_id)).status in ("succeeded", "failed", "cancelled") and job,
                    timeout, f"job {job_id} to end")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_runner(tmp_path, data_dir):
    """Runners on the fake trainer; afterwards stops them and kills any job process still alive."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    runners = []

    def build(job, data):
        return [sys.executable, str(script), job.config["extra"]["fake"], job.id, str(data)]

    def make(**options) -> JobRunner:
        options = {"command_builder": build, "poll_interval_s": 0.1, **options}
        runner = JobRunner(data_dir, **options)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop()
    for job in JobStore(data_dir).with_status("running"):
        if process_alive(job.pid, job.pid_started):
            os.killpg(job.pid, signal.SIGKILL)


def test_jobs_queue_one_at_a_time_and_succeed(make_runner, data_dir):
    ended = []
    runner = make_runner(max_parallel=1, on_finished=ended.append)
    runner.start()
    first = runner.submit(fake_config("first", "succeed_after_go"))
    second = runner.submit(fake_config("second", "succeed"))
    with pytest.raises(ArenaError, match="already being trained"):
        runner.submit(fake_config("first", "succeed"))
    store = runner.store
    wait_for(lambda: store.read_progress(first.id), what="first job's progress")
    assert store.get(first.id).status == "running"
    assert store.get(first.id).pid and store.get(first.id).started
    time.sleep(0.5)
    assert store.get(second.id).status == "queued"  # max_parallel=1: waits for the first

    (store.files(first.id).folder / "GO").touch()
    done = wait_until_ended(store, first.id)
    assert done.status == "succeeded", done.error
    assert done.adapter_path == str(data_dir.resolve() / "adapters" / "first") and Path(done.adapter_path).is_dir()
    assert done.finished and "saved adapter" in done.log_tail
    assert [m["step"] for m in store.read_metrics(first.id)] == [1, 2, 3]
    assert store.read_progress(first.id)["total_steps"] == 3
    assert wait_until_ended(store, second.id).status == "succeeded"
    wait_for(lambda: len(ended) == 2, what="on_finished twice")
    assert [j.id for j in ended] == [first.id, second.id] and ended[0].status == "succeeded"
    assert [j.id for j in store.list()] == [second.id, first.id]  # newest first
    assert "$ " in store.read_log_tail(first.id)  # the runner's header names the command


def test_failures_carry_the_error_line_and_log_tail(make_runner):
    runner = make_runner(max_parallel=2)
    runner.start()
    failing = runner.submit(fake_config("broken", "fail"))
    silent = runner.submit(fake_config("silent", "exit0"))
    job = wait_until_ended(runner.store, failing.id)
    assert job.status == "failed"
    assert job.error == "error: something is wrong with the dataset"
    assert "loading dataset" in job.log_tail
    job = wait_until_ended(runner.store, silent.id)
    assert (job.status, job.error) == ("failed", NO_ADAPTER)


def test_cancel_running_job_keeps_its_checkpoint(make_runner):
    runner = make_runner()
    runner.start()
    job = runner.submit(fake_config("loopy", "loop"))
    wait_for(lambda: runner.store.read_progress(job.id), what="progress")
    assert runner.cancel(job.id).status == "running"  # the trainer stops at its next step
    done = wait_until_ended(runner.store, job.id)
    assert (done.status, done.error) == ("cancelled", None)
    assert list(runner.store.files(job.id).checkpoints.glob("checkpoint-*"))
    with pytest.raises(ArenaError, match="already ended"):
        runner.cancel(job.id)


def test_cancel_ignored_is_killed_after_the_grace(make_runner):
    runner = make_runner(cancel_grace_s=0.5, kill_grace_s=0.5)
    runner.start()
    job = runner.submit(fake_config("stubborn", "stubborn"))
    child = wait_for(lambda: runner.store.read_progress(job.id), what="the stubborn trainer")["child"]
    pid, started = runner.store.get(job.id).pid, runner.store.get(job.id).pid_started
    child_started = process_create_time(child)
    runner.cancel(job.id)
    done = wait_until_ended(runner.store, job.id, timeout=10)
    assert done.status == "cancelled"
    assert "did not stop within 0.5 s of the cancel request" in done.error
    assert not process_alive(pid, started)
    wait_for(lambda: not process_alive(child, child_started), timeout=20, what="the child to be killed too")


def test_cancel_queued_job_at_once(make_runner):
    ended = []
    runner = make_runner(on_finished=ended.append)  # not started: nothing runs
    job = runner.submit(fake_config("waiting", "succeed"))
    assert runner.cancel(job.id).status == "cancelled"
    wait_for(lambda: [j.id for j in ended] == [job.id], what="on_finished for the cancelled job")


def test_a_finished_job_waiting_for_the_device_holds_up_no_other_job(make_runner, tiny_model_path, tiny_adapters,
                                                                     tmp_path):
    """The app's hook reloads a retrained adapter, which waits while a long generation holds the device (the
    reference backend's one-at-a-time device); meanwhile the next job still starts, and a cancel it ignores is
    still enforced."""
    from app.server import _serve_new_adapter

    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path / "data",
                                      adapter_dirs=[tiny_adapters], backend="hf"))
    serve, heard = _serve_new_adapter(engine), []
    runner = make_runner(on_finished=lambda job: (heard.append(job.id), serve(job)), cancel_grace_s=0.3,
                         kill_grace_s=0.3)
    with engine.backend.device.hold():  # the long generation
        runner.start()
        retrained = runner.submit(fake_config("a1", "succeed"))  # the engine serves an a1: the hook reloads it
        wait_for(lambda: retrained.id in heard, what="the hook to be called")  # and it now waits for the device
        stubborn = runner.submit(fake_config("stubborn", "stubborn"))
        wait_for(lambda: runner.store.read_progress(stubborn.id), what="the next job to start")
        runner.cancel(stubborn.id)
        assert wait_until_ended(runner.store, stubborn.id, timeout=10).status == "cancelled"


def test_killed_process_is_marked_died(make_runner):
    runner = make_runner()
    runner.start()
    job = runner.submit(fake_config("victim", "sleep"))
    pid = wait_for(lambda: runner.store.get(job.id).pid, what="a pid")
    os.kill(pid, signal.SIGKILL)
    done = wait_until_ended(runner.store, job.id)
    assert done.status == "failed" and done.error.startswith(DIED)


def spawn_sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)


def test_restart_marks_jobs_that_died_unwatched(data_dir, make_runner):
    store = JobStore(data_dir)
    oom = store.create(fake_config("oom", "sleep"), job_command)
    sleeper = spawn_sleeper()
    store.mark_running(oom.id, sleeper.pid, process_create_time(sleeper.pid))
    store.files(oom.id).log.write_text("step 3\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate\n")
    sleeper.kill()
    sleeper.wait()
    reused = store.create(fake_config("reused", "sleep"), job_command)  # pid alive, but another process than recorded
    store.mark_running(reused.id, os.getpid(), process_create_time(os.getpid()) - 100)

    runner = make_runner()
    runner.start()  # a fresh app: reconcile first
    job = store.get(oom.id)
    assert job.status == "failed" and job.error.startswith(DIED) and "CUDA out of memory" in job.error
    assert "OutOfMemoryError" in job.log_tail
    assert store.get(reused.id).status == "failed"
    assert store.reconcile() == []  # nothing is left "running"


def test_restart_reattaches_to_a_live_job(data_dir, make_runner):
    first_app = make_runner()
    first_app.start()
    job = first_app.submit(fake_config("survivor", "succeed_after_go"))
    wait_for(lambda: first_app.store.read_progress(job.id), what="progress")
    first_app.stop()  # the app goes away; the job keeps running

    ended = []
    second_app = make_runner(on_finished=ended.append)
    second_app.start()
    assert second_app.store.get(job.id).status == "running"  # alive: not marked failed
    (second_app.store.files(job.id).folder / "GO").touch()
    wait_for(lambda: ended, what="on_finished for the re-attached job")
    assert ended[0].id == job.id and ended[0].status == "succeeded"
    assert "saved adapter" in ended[0].log_tail


def test_resume_links_to_the_old_job(data_dir):
    runner = JobRunner(data_dir)  # not started: only the store and the command line are checked
    store = runner.store
    old = runner.submit(fake_config("resumable", "loop"))
    with pytest.raises(ArenaError, match="only a failed or cancelled job"):
        runner.resume(old.id)
    store.finish(old.id, "cancelled")
    with pytest.raises(ArenaError, match="no checkpoint"):
        runner.resume(old.id)
    (store.files(old.id).checkpoints / "checkpoint-7").mkdir()

    new = runner.resume(old.id)
    assert new.id != old.id and new.resume_of == old.id and new.status == "queued"
    assert new.config["extra"]["resume_from"] == str(store.files(old.id).checkpoints)
    assert new.train_config().extra["resume_from"] == str(store.files(old.id).checkpoints)  # job.yaml agrees
    assert TrainConfig.load(store.files(new.id).config).extra["resume_from"] == new.config["extra"]["resume_from"]
    assert new.command[-1] == "--resume" and new.command == job_command(new, store.data_dir)
    assert "--resume" not in old.command


def test_command_line_and_shell_form(data_dir):
    store = JobStore(data_dir)
    job = store.create(fake_config("cmd", "succeed"), job_command)
    command = job_command(job, store.data_dir, num_processes=2)
    assert command[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    assert command[command.index("-m", 3):command.index("-m", 3) + 2] == ["-m", "training"]
    assert command[-6:] == ["--config", str(store.files(job.id).config), "--job-id", job.id,
                            "--data-dir", str(store.data_dir)]
    shown = shell_command(command)
    assert shown.startswith("accelerate launch --num_processes 2 ") and sys.executable not in shown
    assert shell_command(["python", "a b.py"]) == "python 'a b.py'"


def test_store_basics_and_schema_guard(data_dir):
    store = JobStore(data_dir)
    job = store.create(fake_config("basic", "succeed"), job_command)
    assert store.files(job.id).config.is_file() and store.files(job.id).checkpoints.is_dir()
    assert store.get(job.id).config["name"] == "basic"
    assert store.update(job.id, error="note").error == "note"
    with pytest.raises(ArenaError, match="cannot set"):
        store.update(job.id, colour="red")
    with pytest.raises(ArenaError, match="no training job"):
        store.get("nope")
    assert store.finish(job.id, "failed", "first\nreport") and not store.finish(job.id, "succeeded")
    assert store.get(job.id).error == "first report"  # the first report wins, kept to one line
    import sqlite3
    with sqlite3.connect(store.path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ArenaError, match="schema version 99"):
        JobStore(data_dir)


def test_read_metrics_tolerates_a_torn_last_line(data_dir):
    store = JobStore(data_dir)
    job = store.create(fake_config("torn", "succeed"), job_command)
    store.files(job.id).metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [m["step"] for m in store.read_metrics(job.id)] == [1, 2]
    assert store.read_progress(job.id) is None and store.read_log_tail(job.id) == ""


def test_last_error_line_skips_the_launchers_own_traceback():
    log = ["Traceback (most recent call last):", '  File "x.py", line 1',
           "RuntimeError: shapes do not match", "Traceback (most recent call last):",
           "subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1."]
    assert last_error_line(log) == "RuntimeError: shapes do not match"
    assert last_error_line(["warning: x", "error: no such file data.jsonl", "ValueError: y"]) == \
        "error: no such file data.jsonl"
    assert last_error_line(["all fine"]) is None
