"""Command lines: `msm-mae` and its subcommands (thin wrappers over the library)."""
