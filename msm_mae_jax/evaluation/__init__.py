"""Evaluation layer: labelled tasks, linear probes and the linear evaluation."""
