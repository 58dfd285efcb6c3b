"""The bottom layer: Postgres connections, named SQL, migrations.

`ledger` and `billing` build on it; nothing here imports from above.
"""
