"""A streaming chat and coach server that proxies OpenRouter over Server-Sent Events."""
