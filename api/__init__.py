"""The HTTP API (`tokens serve`, SPEC section 8): thin routes over the ledger, queue and billing."""
