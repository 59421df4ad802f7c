"""Pre-trains MSM-MAE.

    python train.py --config configs/msm_mae.py[:VARIANT] --workdir DIR [--config.key=value]

Restarting with the same --workdir resumes from its latest checkpoint. Multi-host: run the
same command on every host (TPU pods and SLURM/Open MPI jobs are detected), or pass
--config.coordinator_address=host:port --config.num_processes=N --config.process_id=I.
"""

import json
import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "configs/msm_mae.py", "Training config file.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, figures).")
flags.mark_flags_as_required(["workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with a readable message for a --config.key the config does not have."""
    try:
        return FLAGS(argv)
    except flags.UnrecognizedFlagError as e:
        if not str(e.flagname).startswith("config."):
            raise
        key = str(e.flagname).rsplit(".", 1)[-1]
    except flags.Error:
        raise
    except (AttributeError, KeyError) as e:  # raised by config_flags for unknown keys
        key = str(e).strip("\"'")
    bad = [a for a in argv[1:] if a.startswith("--config.") and key in a]
    raise SystemExit(
        f"train.py: unknown config key {key!r} in {bad or argv[1:]}; every key "
        "must be declared in the config file (see configs/msm_mae.py)"
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        result = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:  # a readable line instead of a traceback
        raise SystemExit(f"train.py: {e}") from None
    if jax.process_index() == 0:
        print(json.dumps({"final": result}, default=float))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
