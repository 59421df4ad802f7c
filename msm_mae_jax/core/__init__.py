"""Foundations every layer uses: user-facing errors and config-file loading."""
