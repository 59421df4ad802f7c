"""`python -m msm_mae_jax.prepare`: the same as `msm-mae prepare`."""

import sys

from msm_mae_jax.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m msm_mae_jax.prepare"))
