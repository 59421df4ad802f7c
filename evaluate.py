"""Linear evaluation (EVAR protocol) of a pre-trained MSM-MAE encoder on a labelled task.

    python evaluate.py --checkpoint runs/base --task csv:data/esc50.csv --out results.json
    python evaluate.py --baseline logmel --task folder:data/birds
    python evaluate.py --baseline random --config configs/msm_mae.py:tiny --task synthetic

Tasks: csv:FILE (file, label and split or fold columns), folder:DIR (class sub-folders),
tfds:NAME, synthetic[:N]; see msm_mae_jax/tasks.py. Logic lives in msm_mae_jax/linear.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--checkpoint", help="training workdir, exported or converted model dir")
    p.add_argument(
        "--baseline",
        choices=("logmel", "random"),
        help="evaluate a baseline instead of a checkpoint",
    )
    p.add_argument(
        "--config",
        help="model config of the random baseline, e.g. "
        "configs/msm_mae.py:small_208 (default: ViT-B 80x208p16x16)",
    )
    p.add_argument("--task", required=True, help="csv:FILE | folder:DIR | tfds:NAME | synthetic")
    p.add_argument("--label", default="label", help="label column (csv) or feature (tfds)")
    p.add_argument("--audio_key", default="audio", help="audio feature of a tfds task")
    p.add_argument("--tfds_data_dir", default=None)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--layers", help="probe block outputs: 'all' or e.g. '4,8,12' (1-based)")
    p.add_argument(
        "--layer_mode",
        choices=("separate", "concat"),
        default="separate",
        help="probe each requested layer, or their concatenation",
    )
    p.add_argument(
        "--norm",
        choices=("task", "checkpoint"),
        default="task",
        help="log-mel statistics: the task's training clips (EVAR) or the model's",
    )
    p.add_argument(
        "--unit_sec",
        type=float,
        default=0.0,
        help="clip length in seconds (pad/crop as EVAR); 0: longest clip, <= 10 s",
    )
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds (mean ± std)")
    p.add_argument("--split_seed", type=int, default=0, help="seed of generated splits")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max_epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=32, help="clips per encoder call")
    p.add_argument(
        "--cache_dir",
        default=None,
        help="embedding cache (default ~/.cache/msm_mae_jax/embeddings)",
    )
    p.add_argument("--no_cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.baseline is None):
        p.error("give exactly one of --checkpoint and --baseline")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from msm_mae_jax.evaluation import linear, tasks

    try:
        task = tasks.parse_task(
            args.task,
            label=args.label,
            seed=args.split_seed,
            audio_key=args.audio_key,
            tfds_data_dir=args.tfds_data_dir,
        )
        result = linear.evaluate(
            task,
            checkpoint=args.checkpoint,
            baseline=args.baseline,
            config=args.config,
            layers=args.layers,
            layer_mode=args.layer_mode,
            norm=args.norm,
            unit_sec=args.unit_sec or None,
            batch_size=args.batch_size,
            cache_dir=None if args.no_cache else (args.cache_dir or linear.DEFAULT_CACHE_DIR),
            progress=not args.no_progress,
            seeds=tuple(range(args.seeds)),
            probe_kw={"lr": args.lr, "max_epochs": args.max_epochs, "patience": args.patience},
            log=lambda m: print(m, file=sys.stderr),
        )
    except (tasks.TaskError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(linear.format_table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
