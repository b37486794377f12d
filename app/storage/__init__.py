"""The database: tables, queries, migrations, the SQLite writer."""
