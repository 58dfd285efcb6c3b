"""The composition root: what builds the services of one process from its settings.

settings -> servers (configured, or embedded under the data dir) -> pools ->
the Ledger, the arq pool, the Stripe client; and the health checks of them.
Every entry point (the CLI, the API, the worker) builds through here, so the
packages below never reach for a server themselves and can be handed fakes.
Nothing is imported here: a `--json` command pays only for what it opens.
"""
