"""Fine-tunes a pre-trained MSM-MAE encoder on a labelled task (see msm_mae_jax/cli/finetune.py).

    python finetune.py --checkpoint runs/base/export --task csv:data/esc50.csv --out ft.json
    python finetune.py --checkpoint DIR --task SPEC --out FILE.json \
        --config configs/finetune.py:frozen --config.epochs=20
"""

import sys

from msm_mae_jax.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
