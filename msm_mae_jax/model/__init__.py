"""Model layer: the MSM-MAE network, its config, the encoder artifact and weight conversion."""
