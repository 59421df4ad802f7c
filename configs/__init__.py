"""Training, fine-tuning and model configs (`get_config(variant)` in each file)."""
