"""Fine-tuning of an encoder: the same as `msm-mae finetune` (`python finetune.py --help`).

python finetune.py --checkpoint runs/base/export --task csv:data/esc50.csv --out ft.json
"""

import sys

from msm_mae_jax.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main(prog="finetune.py"))
