"""The vocabulary every floor may import: states, money, stage names, the run request, model
ids, redaction, what says the database is away (`outage`). It imports nothing else of ours."""
