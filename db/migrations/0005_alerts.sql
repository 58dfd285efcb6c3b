-- Usage alerts (README, "Usage alerts"): 80 % and 100 % of a billing month's free
-- grant ('free') and of the team's additional-token limit ('additional').
--
-- Made by the trigger in ledger/sql/alerts.sql, in the transaction of the
-- charge that crossed the level; the unique key makes each one exactly once
-- per team, billing month, kind and level. The table is also the outbox of
-- the webhook delivery (worker/alerts.py): `delivered_at` is set once the
-- receiver answered 2xx, and an alert is never sent again after that.

CREATE TABLE alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- `alert_id` outside: unique across databases, so a receiver that
    -- deduplicates on it never drops an alert of a reset or second environment.
    public_id uuid NOT NULL DEFAULT gen_random_uuid() CONSTRAINT alerts_public_id_key UNIQUE,
    team_id text NOT NULL,
    period_start timestamptz NOT NULL,
    kind text NOT NULL CONSTRAINT alerts_kind_valid CHECK (kind IN ('free', 'additional')),
    level integer NOT NULL CONSTRAINT alerts_level_valid CHECK (level IN (80, 100)),
    -- Tokens used (held + spent) of that kind right after the crossing charge,
    -- and the grant or limit they were measured against.
    spent bigint NOT NULL CONSTRAINT alerts_spent_nonneg CHECK (spent >= 0),
    granted_or_limit bigint NOT NULL CONSTRAINT alerts_base_pos CHECK (granted_or_limit > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Webhook delivery (the outbox).
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    delivered_at timestamptz,
    CONSTRAINT alerts_once UNIQUE (team_id, period_start, kind, level),
    FOREIGN KEY (team_id, period_start) REFERENCES billing_months (team_id, period_start)
);

-- A team's alerts, newest first.
CREATE INDEX alerts_team_idx ON alerts (team_id, id);
-- Alerts still to deliver, by when they are due.
CREATE INDEX alerts_undelivered_idx ON alerts (next_attempt_at) WHERE delivered_at IS NULL;
