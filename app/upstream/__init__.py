"""OpenRouter: the client and its typed events, the HTTP client pool, the model catalog."""
