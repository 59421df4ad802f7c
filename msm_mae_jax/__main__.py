"""`python -m msm_mae_jax COMMAND ...`: the same as `msm-mae COMMAND ...`."""

import sys

from msm_mae_jax.cli.main import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m msm_mae_jax"))
