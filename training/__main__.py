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

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")

from kernel.config import ArenaError, resolve_data_dir  # noqa: E402

from .config import TrainConfig  # noqa: E402


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return JobStore(data_dir).create(cfg).id
    from datetime import timedelta

    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    # The process group the Trainer would start anyway, with TrainingArguments' default ddp_timeout.
    PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=1800))
    box = [JobStore(data_dir).create(cfg).id if is_main_process() else None]
    return broadcast_object_list(box, from_process=0)[0]


def main(argv=None) -> int:
    args = parse_args(argv)
    reporter = None
    try:
        data_dir = resolve_data_dir(args.data_dir)
        cfg = build_config(args)
        if args.check:
            from .check import print_check

            print_check(cfg, data_dir)
            return 0
        from .job_store import JobReporter, latest_checkpoint

        if cfg.preference:
            from .preference import train_preference as train
        else:
            from .trainer import train

        if args.job_id is None:  # headless
            args.job_id = register_headless(cfg, data_dir)
        if is_main_process():
            reporter = JobReporter(data_dir, args.job_id)
            reporter.running()
        job_folder = data_dir / "jobs" / args.job_id if args.job_id else None
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
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if reporter is not None:
            reporter.failed(str(exc))
        return 1
    except KeyboardInterrupt:
        if reporter is not None:
            reporter.failed("interrupted")
        return 130
    except Exception as exc:
        if reporter is not None:
            reporter.failed(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
