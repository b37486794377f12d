"""A reply's life: turns (input to run), the Run, its events, replay from the database."""
