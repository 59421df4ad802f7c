"""The labelled-task flags that `eval` and `finetune` share, and the task they name."""

from __future__ import annotations

import argparse
from typing import Any


def add_task_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--task and the flags that say how to read it."""
    add = p.add_argument
    add(
        "--task",
        required=required,
        metavar="SPEC",
        help="csv:FILE | folder:DIR | tfds:NAME | synthetic[:N]",
    )
    add("--label", default="label", metavar="NAME", help="label column (csv) or feature (tfds)")
    add(
        "--file-column",
        metavar="NAME",
        help="file column of a csv task (default: 'file', else 'file_name' as EVAR's CSVs)",
    )
    add(
        "--audio-dir",
        metavar="DIR",
        help="folder the csv task's relative paths start from (default: the CSV's folder)",
    )
    add("--audio-key", default="audio", metavar="NAME", help="audio feature of a tfds task")
    add("--tfds-data-dir", metavar="DIR", help="TensorFlow Datasets data_dir")
    add(
        "--split-seed",
        type=int,
        metavar="N",
        default=0,
        help="seed of generated splits (default: 0)",
    )


def task_inputs(args: argparse.Namespace) -> list[Any]:
    """The files and folders the task flags name (`core.outputs.Input`s), which no output may
    replace: the task CSV, its audio folder, the checkpoint."""
    from msm_mae_jax.core.outputs import Input

    found = []
    kind, _, where = (args.task or "").partition(":")
    if kind == "csv" and where:
        found.append(Input(where, "the task CSV"))
    elif kind == "folder" and where:
        found.append(Input(where, "the task folder"))
    if args.audio_dir:
        found.append(Input(args.audio_dir, "the task's audio folder"))
    if getattr(args, "checkpoint", None):
        found.append(Input(args.checkpoint, "the checkpoint"))
    return found


def parse_task(args: argparse.Namespace) -> Any:
    """The `tasks.specs.Task` the flags name (its mistakes raise TaskError)."""
    from msm_mae_jax.tasks import specs

    return specs.parse_task(
        args.task,
        label=args.label,
        file_column=args.file_column,
        audio_dir=args.audio_dir,
        seed=args.split_seed,
        audio_key=args.audio_key,
        tfds_data_dir=args.tfds_data_dir,
    )
