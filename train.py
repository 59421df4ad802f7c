"""Pre-trains MSM-MAE: the same as `msm-mae train` (`python train.py --help`).

python train.py --config configs/msm_mae.py[:VARIANT] --workdir DIR [--config.key=value]
"""

import sys

from msm_mae_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
