"""A reply's life: the Run and its parts (attempts, draft, writer), the wire (its events),
the live log, followers, replay from the database, the Redis mirror, recovery, titles."""
