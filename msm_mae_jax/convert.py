"""`python -m msm_mae_jax.convert`: the same as `msm-mae convert`."""

import sys

from msm_mae_jax.model.convert import main

if __name__ == "__main__":
    sys.exit(main())
