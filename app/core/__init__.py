"""The vocabulary every floor may import: states, money, stage names, the run request, model
ids, redaction. It imports nothing else of ours."""
