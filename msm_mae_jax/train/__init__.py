"""Training layer: sharded state and step, the loop, optimizer, checkpoints, logs, export."""
