"""`python -m app [serve|migrate|check]`: the process entry points, above everything they start."""
