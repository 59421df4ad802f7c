"""Tasks layer: labelled downstream tasks (clips, labels, splits), their clips fitted to unit
length, and the paper's EVAR tasks (the settings table and the builders of `tasks make`)."""
