"""The HTTP API (`tokens serve`, README "The HTTP API and the billing page"): thin routes
over the ledger, queue and billing."""
