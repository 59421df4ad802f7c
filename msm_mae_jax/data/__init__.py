"""Data layer: log-mel front end, audio files, sources, tf.data pipelines, log-mel shards."""
