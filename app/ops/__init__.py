"""Running the process: garbage-collector freeze."""
