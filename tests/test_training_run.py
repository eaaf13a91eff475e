"""The real trainer, `python -m training`, on the tiny random Llama: it learns, saves, cancels and resumes.

Every test runs the very command a user (or the Training tab, through JobRunner and `accelerate
launch`) runs, in its own process, on the Ahoy demo dataset. Two CPU cores make each step well
under a second; the whole file takes about a minute and a half.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from models import Engine, EngineConfig, SamplingParams
from models.discovery import scan_root
from tests.helpers import in_process, wait_for
from training.config import TrainConfig
from training.job_store import JobStore, latest_checkpoint
from training.jobs import JobRunner
from kernel.process import process_alive

REPO = Path(__file__).resolve().parent.parent
AHOY = REPO / "training" / "examples" / "ahoy_demo.json"
AHOY_ROWS = json.loads(AHOY.read_text(encoding="utf-8"))
SMALL = ["--max-length", "128", "--batch-size", "4"]  # short rows: 128 tokens hold every Ahoy answer
GREEDY = SamplingParams(max_new_tokens=12)
QUESTION = "What is the capital of France?"


def train_command(data_dir: Path, *args) -> subprocess.CompletedProcess:
    """`python -m training ...` from the repo root, as a user types it."""
    command = [sys.executable, "-m", "training", "--data-dir", str(data_dir), *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def wait_until_settled(ended: list, job_id: str, timeout: float):
    """The runner's on_finished call: the process has exited and the job's record is complete."""
    return wait_for(lambda: next((job for job in ended if job.id == job_id), None), timeout, f"job {job_id} to end")


def cancel_after(runner: JobRunner, ended: list, job_id: str, steps: int):
    """Let a running job do `steps` steps, ask it to cancel, and return its record once it has ended."""
    wait_for(lambda: (runner.store.read_progress(job_id) or {}).get("step", 0) >= steps, 180, f"{steps} steps")
    runner.cancel(job_id)
    return wait_until_settled(ended, job_id, 120)


def stop_all(runner: JobRunner) -> None:
    """Stop scheduling and kill any job still running (a failed test must not leave a trainer behind)."""
    runner.stop()
    for job in runner.store.with_status("running"):
        if process_alive(job.pid, job.pid_started):
            os.killpg(job.pid, signal.SIGKILL)


def eval_losses(store: JobStore, job_id: str) -> list[float]:
    return [m["eval_loss"] for m in store.read_metrics(job_id) if "eval_loss" in m]


# ----- a) a short job ---------------------------------------------------------------------------

def test_a_short_job_learns_and_the_engine_serves_its_adapter(tmp_path, tiny_model_path):
    data = tmp_path / "data"
    run = train_command(data, "--dataset", AHOY, "--name", "ahoy", "--base", tiny_model_path,
                        "--learning-rate", "5e-3", "--epochs", "3", "--eval-every", "5", "--keep-checkpoints", "0",
                        *SMALL)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"adapter saved to {data.resolve() / 'adapters' / 'ahoy'}" in run.stdout

    store = JobStore(data)  # a headless run registers itself, so the app lists it
    [job] = store.list()
    assert (job.name, job.status, job.error) == ("ahoy", "succeeded", None)
    losses = eval_losses(store, job.id)
    print(f"ahoy eval loss: first {losses[0]:.4f}, last {losses[-1]:.4f} over {len(losses)} evaluations")
    assert len(losses) >= 5 and losses[0] > losses[-1]

    adapter = Path(job.adapter_path)
    assert adapter == data.resolve() / "adapters" / "ahoy"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"  # the base's name, not this machine's path
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    check_card(json.loads((adapter / "arena_card.json").read_text()), losses)

    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data))
    checkpoints = [v for v in engine.variants() if v.startswith("ahoy@")]
    steps = [int(v.split("@")[1]) for v in checkpoints]
    assert engine.variants()[:2] == ["base", "ahoy"] and steps == sorted(steps) and steps[:2] == [5, 10]
    base, ahoy, first = engine.compare(["base", "ahoy", checkpoints[0]], QUESTION, params=GREEDY)
    assert ahoy.text and ahoy.text != base.text
    kept = {a.name: a for a in engine.adapters()}[checkpoints[0]]  # the job's own checkpoint, served lazily
    assert kept.status == "loaded" and kept.eval_loss == pytest.approx(losses[0], abs=1e-4)


def lora_weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def test_a_later_stage_starts_from_the_earlier_adapter(tmp_path, tiny_model_path):
    """Sequential fine-tuning: stage 2 goes on from stage 1's weights (and its rank), not from a fresh LoRA."""
    data = tmp_path / "data"
    first = train_command(data, "--dataset", AHOY, "--name", "stage1", "--base", tiny_model_path,
                          "--learning-rate", "5e-3", "--max-steps", "4", *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    # A learning rate too small to move anything: stage 2's weights must still be stage 1's.
    second = train_command(data, "--dataset", AHOY, "--name", "stage2", "--base", tiny_model_path,
                           "--init-adapter", "stage1", "--rank", "4", "--learning-rate", "1e-12", "--max-steps", "1",
                           *SMALL)
    assert second.returncode == 0, second.stderr[-3000:]
    stage1, stage2 = lora_weights(data / "adapters" / "stage1"), lora_weights(data / "adapters" / "stage2")
    assert stage1.keys() == stage2.keys()
    for key, tensor in stage1.items():
        assert tensor.shape == stage2[key].shape, key  # rank 16 from stage 1, not the --rank 4 given
        assert torch.allclose(tensor, stage2[key], atol=1e-6), key
    assert any("lora_B" in key and tensor.abs().max() > 0 for key, tensor in stage2.items())  # not a fresh LoRA
    card = json.loads((data / "adapters" / "stage2" / "arena_card.json").read_text())
    assert card["training"]["init_adapter"] == "stage1"


def check_card(card: dict, losses: list[float]) -> None:
    """What the Models tab and a reader of the adapter folder learn about how it was made."""
    assert card["base_model"] == "tiny-llama"
    assert card["dataset"]["name"] == "ahoy_demo.json"
    assert card["dataset"]["sha256"] == hashlib.sha256(AHOY.read_bytes()).hexdigest()
    assert card["dataset"]["rows_total"] == card["dataset"]["rows_kept"] == len(AHOY_ROWS)
    assert (card["dataset"]["train_rows"], card["dataset"]["validation_rows"]) == (36, 4)  # split 0.1
    training = card["training"]
    assert (training["learning_rate"], training["epochs"], training["max_length"]) == (5e-3, 3.0, 128)
    metrics = card["metrics"]
    assert [e["loss"] for e in metrics["eval_loss"]] == pytest.approx(losses)
    assert len(metrics["train_loss"]) == metrics["steps"] == 27  # 36 rows / batch 4 = 9 steps, 3 epochs
    assert metrics["best_eval_loss"] == pytest.approx(min(losses))
    assert 0 < card["trainable_parameters"] < card["total_parameters"]
    assert card["trainable_share"] == pytest.approx(card["trainable_parameters"] / card["total_parameters"])
    assert card["wall_seconds"] > 0 and card["peak_memory_mb"] > 0
    assert {"torch", "transformers", "peft", "python"} <= set(card["versions"])


# ----- b) cancel, then resume, through the app's runner -------------------------------------------

def test_b_cancelled_job_keeps_a_checkpoint_and_resumes_from_it(tmp_path, tiny_model_path):
    data = tmp_path / "data"
    ended = []
    runner = JobRunner(data, cancel_grace_s=120, poll_interval_s=0.2, on_finished=ended.append)  # real command
    config = TrainConfig(name="resumed", dataset=str(AHOY), base=str(tiny_model_path), max_steps=30,
                         eval_every=5, max_length=128, batch_size=4, learning_rate=5e-3)
    runner.start()
    try:
        first = runner.submit(config)
        cancelled = cancel_after(runner, ended, first.id, 3)
        assert (cancelled.status, cancelled.error) == ("cancelled", None)  # it stopped by itself, in time
        assert "cancelled: the last checkpoint is kept" in cancelled.log_tail
        checkpoint = latest_checkpoint(runner.store.files(first.id).checkpoints)
        stopped_at = int(checkpoint.name.split("-")[1])
        assert 3 <= stopped_at < 30 and (checkpoint / "adapter_model.safetensors").is_file()
        assert not (data / "adapters" / "resumed").exists()

        second = runner.resume(first.id)
        done = wait_until_settled(ended, second.id, 240)
    finally:
        stop_all(runner)
    assert (done.status, done.error, done.resume_of) == ("succeeded", None, first.id)
    steps = [m["step"] for m in runner.store.read_metrics(second.id) if "loss" in m]
    assert steps[0] == stopped_at + 1 and steps[-1] == 30  # it went on where the first job stopped
    card = json.loads((Path(done.adapter_path) / "arena_card.json").read_text())
    assert card["metrics"]["steps"] == 30


# ----- c) a save killed half-way ----------------------------------------------------------------

KILLED_SAVE = textwrap.dedent('''
    import resource, signal, sys
    from pathlib import Path

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kernel.data_dir import DataDir
    from training.trainer import save_adapter

    base, adapters, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=16, target_modules=["q_proj"]))
    if limit:
        # From here no file may grow past `limit` bytes: the kernel kills this process (SIGXFSZ, which
        # Python ignores by default) inside the write of the weights; like SIGKILL, no cleanup runs.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    save_adapter(model, "ahoy", DataDir(adapters.parent), "tiny-llama", {"note": "never finished"})
    print("saved: the size limit did not bite")
''')


def test_c_a_process_killed_while_saving_leaves_no_half_adapter(tmp_path, tiny_model_path):
    data = tmp_path / "data"
    adapters = data / "adapters"
    limit = 16 * 1024  # the weights are ~60 KB; config and card are smaller
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tiny_model_path), str(adapters), str(limit)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGXFSZ, killed.stdout + killed.stderr[-2000:]
    [half] = adapters.iterdir()  # what the dead process left: a dot folder, killed in the weights write
    assert half.name.startswith(".saving-ahoy-")
    left = {p.name for p in half.iterdir()}
    assert "README.md" in left and not left & {"adapter_model.safetensors", "adapter_config.json", "arena_card.json"}

    assert scan_root(adapters) == []  # the registry skips dot folders: nothing to list, nothing broken
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data))
    assert engine.variants() == ["base"] and engine.adapters() == []

    retry = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tiny_model_path), str(adapters), "0"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert retry.returncode == 0 and "saved" in retry.stdout, retry.stderr[-2000:]
    [info] = scan_root(adapters)
    assert (info.name, info.status, info.base_model) == ("ahoy", "available", "tiny-llama")
    assert [p.name for p in adapters.iterdir()] == ["ahoy"]  # the next save cleared the dead one's folder
    assert engine.rescan() and engine.variants() == ["base", "ahoy"]
    assert engine.generate("ahoy", QUESTION, params=GREEDY).text


# ----- d) two processes -------------------------------------------------------------------------

def test_d_two_processes_on_the_cpu_train_one_job(tmp_path, tiny_model_path):
    """`--multi_gpu` is accelerate's switch for its torchrun launcher; without a GPU the two processes
    talk over gloo. Without it, `--num_processes 2` on a CPU silently runs a single process."""
    data, scratch = tmp_path / "data", tmp_path / "tmp"
    scratch.mkdir()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "training", "--dataset", str(AHOY), "--name", "two", "--base", str(tiny_model_path),
               "--data-dir", str(data), "--max-steps", "4", "--eval-every", "2", *SMALL]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TMPDIR": str(scratch)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    card = json.loads((data / "adapters" / "two" / "arena_card.json").read_text())
    assert card["metrics"]["epochs"] == pytest.approx(0.8)  # 4 steps of 2 x 4 rows: 18 per process, 5 steps each

    [job] = JobStore(data).list()  # one job for both processes, and both checkpoint into its folder
    assert job.status == "succeeded"
    checkpoint = latest_checkpoint(JobStore(data).files(job.id).checkpoints)
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert not list(scratch.glob("arena-train-*"))  # no rank trained into a forgotten temp folder


def launched_env(tmp_path: Path, config: str, processes: int) -> list[dict]:
    """What `accelerate launch --config_file training/accelerate/CONFIG` hands each process it starts."""
    script = tmp_path / "env.py"
    script.write_text("import json, os\nprint(json.dumps({k: v for k, v in os.environ.items() "
                      "if k.startswith(('ACCELERATE_', 'FSDP_')) or k in ('RANK', 'WORLD_SIZE')}))\n")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "training" / "accelerate" / config), "--num_processes", str(processes), str(script)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_d_the_ddp_config_file_starts_one_process_per_device(tmp_path):
    ranks = launched_env(tmp_path, "ddp.yaml", 2)
    assert sorted(env["RANK"] for env in ranks) == ["0", "1"] and {env["WORLD_SIZE"] for env in ranks} == {"2"}


def test_d_the_fsdp_config_file_asks_for_fsdp2_with_full_weights_at_the_end(tmp_path):
    """FSDP itself needs GPUs: on a CPU accelerate runs the same job as plain data parallel, so what can be
    checked here is that the file reaches accelerate as FSDP2, one shard unit per decoder layer."""
    [env] = launched_env(tmp_path, "fsdp.yaml", 1)
    assert (env["ACCELERATE_USE_FSDP"], env["FSDP_VERSION"]) == ("true", "2")
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"


# ----- e) bad input ----------------------------------------------------------------------------

def write_rows(path: Path, rows) -> Path:
    path.write_text(rows if isinstance(rows, str) else json.dumps(rows), encoding="utf-8")
    return path


ONE_ROW = [{"instruction": "Say hi.", "output": "Ahoy!"}]
BAD_ROWS = [{"instruction": "Say hi."}, {"prompt": 3, "completion": "x"}, "just a string"]
# (case, rows or None for the Ahoy file, extra options, what the error line must say)
BAD_INPUT = [
    ("empty-file", "  \n", [], "the file is empty"),
    ("unknown-format", None, ["--format", "yaml"], "format for sft must be one of"),
    ("all-rows-invalid", BAD_ROWS, ["--format", "alpaca"], "no usable rows as alpaca (row 1: missing field: output"),
    ("too-few-rows", ONE_ROW, [], "validation_split 0.1 needs at least 5 rows"),
    ("prompt-over-max-length", None, ["--max-length", "16"], "max_length 16"),
    ("unknown-base", None, ["--base", "{tmp}/no-such-model"], "neither a local model folder nor a Hub id"),
    ("full-with-init-adapter", None, ["--method", "full", "--init-adapter", "x"],
     "init_adapter continues a LoRA adapter; method full trains the base's own weights"),
    ("unknown-init-adapter", None, ["--init-adapter", "ghost"], "init_adapter 'ghost': no adapter by that name in"),
]
THROUGH_TRAINING = {"too-few-rows", "all-rows-invalid", "unknown-init-adapter"}  # the rest through --check, faster


@pytest.mark.parametrize("case, rows, options, message", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_e_bad_input_is_one_clear_error_before_training(tmp_path, tiny_model_path, capsys, case, rows, options,
                                                        message):
    from training import __main__ as training_cli

    data = tmp_path / "data"
    dataset = AHOY if rows is None else write_rows(tmp_path / "rows.json", rows)
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    check = [] if case in THROUGH_TRAINING else ["--check"]
    # python -m training's main() in this process: the same code as the command, without its imports each time
    run = in_process(training_cli.main, ["--data-dir", data, "--dataset", dataset, "--name", "bad",
                                         "--base", tiny_model_path, *options, *check], capsys)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]  # kernel.cli: a user error exits 2
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error:") and message in last_line, last_line
    assert "Traceback" not in run.stderr
    assert not (data / "adapters" / "bad").exists()
    if not check and case != "unknown-format":  # the registered job says why it failed
        [job] = JobStore(data).list()
        assert job.status == "failed" and message in job.error
