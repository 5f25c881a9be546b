"""Persistence: schema, migrations, and the queries the use cases need."""
