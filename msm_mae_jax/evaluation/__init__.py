"""Evaluation layer: frozen encoders on labelled tasks (embeddings and their cache, the EVAR
linear probe, the linear evaluation, a suite of tasks and its table)."""
