"""Features layer: the feature-extraction runtime, the HEAR API and file embedding."""
