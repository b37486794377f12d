"""Money and cost lookups against OpenRouter's generation records."""
