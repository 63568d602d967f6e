"""Long-running measurements of sarbot, run by hand (``python -m bench.<name>``)."""
