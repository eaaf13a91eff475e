"""`python -m training`: run one LoRA / QLoRA job headless; the Training tab runs this same command.

    python -m training --dataset data.json --name my-adapter
    python -m training --dataset pairs.jsonl --name my-dpo --method dpo --init-adapter my-adapter   # or orpo, kto
    python -m training --config DATA/jobs/ID/job.yaml            # rerun a saved job
    python -m training --dataset data.json --name x --check      # validate and preview only
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from kernel.cli import Parser, quiet_libraries, run_command
from kernel.data_dir import DataDir, resolve_data_dir
from kernel.errors import ArenaError

quiet_libraries(transformers="warning")  # a training log keeps transformers' warnings: they explain failures
from .config import TrainConfig  # noqa: E402  (loads transformers)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, all defaulting to None so a --config file fills the rest."""
    for field in dataclasses.fields(TrainConfig):
        if field.name == "extra":
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "str")
        if "bool" in kind:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        elif kind.startswith("int"):
            parser.add_argument(flag, dest=field.name, type=int, default=None)
        elif kind.startswith("float"):
            parser.add_argument(flag, dest=field.name, type=float, default=None)
        else:
            parser.add_argument(flag, dest=field.name, default=None)


PROG = "python -m training"


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a job.yaml; options given here override it")
    parser.add_argument("--data-dir", default=None, help="default $ARENA_DATA_DIR or ./arena_data")
    parser.add_argument("--job-id", default=None, help="(set by the app) the job record to report to")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in the config's extra.resume_from")
    parser.add_argument("--check", action="store_true", help="validate the dataset and show a preview, then stop")
    add_config_args(parser)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name != "extra" and getattr(args, f.name) is not None}
    if args.config:
        return TrainConfig.load(args.config).replace(**given)
    return TrainConfig.from_dict(given, where="command line")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def register_headless(cfg: TrainConfig, data_dir) -> str:
    """A job run by hand registers itself so the app lists it too. Under several processes rank 0
    creates it and tells the others its id: every rank checkpoints into, and watches CANCEL in,
    that job's folder (else the other ranks would train into a temp folder and never see a cancel)."""
    from .job_store import JobStore
    from .jobs import job_command

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return JobStore(data_dir).create(cfg, job_command).id
    from datetime import timedelta

    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    # The process group the Trainer would start anyway, with TrainingArguments' default ddp_timeout.
    PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=1800))
    box = [JobStore(data_dir).create(cfg, job_command).id if is_main_process() else None]
    return broadcast_object_list(box, from_process=0)[0]


def run_job(args: argparse.Namespace, reporters: list) -> None:
    """Check, or train and report to the job's record; the reporter goes into `reporters` once there is one."""
    data_dir = resolve_data_dir(args.data_dir)
    cfg = build_config(args)
    from .check import check_targets

    check_targets(cfg, DataDir(data_dir).models)  # before a job record exists: a typo leaves none behind
    if args.check:
        from .check import print_check

        print_check(cfg, data_dir)
        return
    from .job_store import JobReporter, latest_checkpoint

    if cfg.preference:
        from .preference import train_preference as train
    else:
        from .trainer import train

    if args.job_id is None:  # headless
        args.job_id = register_headless(cfg, data_dir)
    reporter = None
    if is_main_process():
        reporter = JobReporter(data_dir, args.job_id)
        reporters.append(reporter)
        reporter.running()
    job_folder = DataDir(data_dir).job(args.job_id) if args.job_id else None
    resume_from = None
    if args.resume:
        resume_from = latest_checkpoint(cfg.extra.get("resume_from", ""))
        if resume_from is None:
            raise ArenaError(f"no checkpoint to resume from in {cfg.extra.get('resume_from')}")
    adapter = train(cfg, data_dir, reporter=reporter, resume_from=resume_from, output_dir=job_folder)
    if reporter is not None:
        if adapter is None:
            reporter.cancelled()
            print("cancelled: the last checkpoint is kept; resume the job to continue")
        else:
            reporter.succeeded(adapter)
            print(f"adapter saved to {adapter}")


def main(argv=None) -> int:
    args = parse_args(argv)
    reporters = []  # the job's record hears why the command failed, once the job has one

    def failed(reason: str) -> None:
        for reporter in reporters:
            reporter.failed(reason)
    return run_command(lambda: run_job(args, reporters), interrupted="interrupted: resume the job to continue",
                       on_failure=failed)


if __name__ == "__main__":
    sys.exit(main())
