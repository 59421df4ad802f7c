"""Planning runs on TPU slices (and NVIDIA GPUs) from the real train step compiled for them on
this machine: chips.py (TPU chips and slices), devices.py (libtpu's compile-only devices),
gpus.py (GPU targets), analysis.py (memory, FLOPs, collectives of a compiled program),
hlo.py (the optimised HLO text: ops, tiled array sizes, memory spaces), breakdown.py (FLOPs
and bytes op by op, HBM or on chip), planner.py (plans, roofline, sweep), report.py (table
and JSON)."""
