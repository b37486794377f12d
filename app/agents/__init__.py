"""Agent configs (agents.toml) and their run-time overrides."""
