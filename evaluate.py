"""Linear evaluation of an encoder: the same as `msm-mae eval` (`python evaluate.py --help`).

python evaluate.py --checkpoint runs/base --task csv:data/esc50.csv --out results.json
"""

import sys

from msm_mae_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main(prog="evaluate.py"))
