"""`python -m msm_mae_jax.convert`: the same as `msm-mae convert`."""

import sys

from msm_mae_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m msm_mae_jax.convert"))
