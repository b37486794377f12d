"""Running the process: logging, garbage-collector freeze."""
