"""Writes an evaluate.py task CSV for the Free Spoken Digit Dataset.

    python scripts/make_fsdd_csv.py runs/fsdd.csv [--root ../shared/data/fsdd/recordings]
        [--speakers nicolas,theo,yweweler]

Columns: file (relative to the CSV), digit, speaker, split (takes 0-4 test, 5-49 train, the
usual FSDD split; evaluate.py takes 10% of train, stratified, as validation).
Use with `evaluate.py --task csv:runs/fsdd.csv --label digit` (or `--label speaker`).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys

from msm_mae_jax.core import outputs

NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="CSV to write")
    p.add_argument("--root", default="../shared/data/fsdd/recordings")
    p.add_argument("--speakers", default="", help="only these speakers (comma-separated)")
    a = p.parse_args(argv)
    speakers = {s for s in a.speakers.split(",") if s}
    if not os.path.isdir(a.root):
        print(f"error: FSDD recordings not found at {a.root}", file=sys.stderr)
        return 2
    base = os.path.dirname(os.path.abspath(a.out))
    rows = []
    for name in sorted(os.listdir(a.root)):
        m = NAME.match(name)
        if m and (not speakers or m.group(2) in speakers):
            digit, speaker, take = m.group(1), m.group(2), int(m.group(3))
            path = os.path.relpath(os.path.abspath(os.path.join(a.root, name)), base)
            rows.append((path, digit, speaker, "test" if take < 5 else "train"))
    if not rows:
        print(
            f"error: no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) in {a.root}",
            file=sys.stderr,
        )
        return 2
    try:
        with outputs.writing(a.out, flag="OUT") as f:  # written beside, then swapped in
            w = csv.writer(f)
            w.writerow(["file", "digit", "speaker", "split"])
            w.writerows(rows)
    except outputs.OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} clips to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
