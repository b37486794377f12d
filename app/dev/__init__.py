"""Development and test aids: the OpenRouter simulator and a threaded uvicorn server."""
