"""`python -m msm_mae_jax.export`: the same as `msm-mae export`."""

import sys

from msm_mae_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m msm_mae_jax.export"))
