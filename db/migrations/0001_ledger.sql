-- The ledger: teams, their billing months with running totals, charges, limit changes.
-- Totals are checked here so that no code path can make a wrong balance.

CREATE TABLE plans (
    name text PRIMARY KEY,
    free_tokens bigint NOT NULL CONSTRAINT plans_free_tokens_nonneg CHECK (free_tokens >= 0),
    per_seat boolean NOT NULL,
    once boolean NOT NULL,
    additional_allowed boolean NOT NULL,
    unit_price numeric(12, 6) NOT NULL CONSTRAINT plans_unit_price_pos CHECK (unit_price > 0),
    threshold_cents bigint NOT NULL CONSTRAINT plans_threshold_pos CHECK (threshold_cents > 0),
    currency text NOT NULL
);

CREATE TABLE teams (
    id text PRIMARY KEY CONSTRAINT teams_id_valid CHECK (id <> '' AND length(id) <= 200),
    plan text NOT NULL REFERENCES plans (name),
    seats integer NOT NULL CONSTRAINT teams_seats_nonneg CHECK (seats >= 0),
    billing_interval text NOT NULL
        CONSTRAINT teams_interval_valid CHECK (billing_interval IN ('month', 'year')),
    anchor timestamptz NOT NULL,
    stripe_customer text,
    additional_limit bigint NOT NULL DEFAULT 0
        CONSTRAINT teams_limit_nonneg CHECK (additional_limit >= 0),
    trial_granted boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE billing_months (
    team_id text NOT NULL REFERENCES teams (id),
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    free_granted bigint NOT NULL,
    free_held bigint NOT NULL DEFAULT 0,
    free_spent bigint NOT NULL DEFAULT 0,
    additional_held bigint NOT NULL DEFAULT 0,
    additional_spent bigint NOT NULL DEFAULT 0,
    additional_billed bigint NOT NULL DEFAULT 0,
    -- Set when the month-end bill has been made: nothing of this month is billed after.
    closed_at timestamptz,
    PRIMARY KEY (team_id, period_start),
    CONSTRAINT billing_months_period_valid CHECK (period_end > period_start),
    CONSTRAINT billing_months_totals_nonneg CHECK (
        free_granted >= 0 AND free_held >= 0 AND free_spent >= 0
        AND additional_held >= 0 AND additional_spent >= 0 AND additional_billed >= 0
    ),
    CONSTRAINT billing_months_free_within_grant CHECK (free_held + free_spent <= free_granted),
    CONSTRAINT billing_months_billed_within_spent CHECK (additional_billed <= additional_spent)
);

CREATE TABLE charges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_id text NOT NULL,
    period_start timestamptz NOT NULL,
    idempotency_key text NOT NULL
        CONSTRAINT charges_key_valid CHECK (idempotency_key <> '' AND length(idempotency_key) <= 255),
    action text NOT NULL,
    quantity integer NOT NULL CONSTRAINT charges_quantity_pos CHECK (quantity > 0),
    tokens bigint NOT NULL CONSTRAINT charges_tokens_pos CHECK (tokens > 0),
    free_tokens bigint NOT NULL CONSTRAINT charges_free_nonneg CHECK (free_tokens >= 0),
    additional_tokens bigint NOT NULL
        CONSTRAINT charges_additional_nonneg CHECK (additional_tokens >= 0),
    state text NOT NULL
        CONSTRAINT charges_state_valid CHECK (state IN ('held', 'captured', 'released', 'expired')),
    job_id text,
    lead_id text,
    held_at timestamptz NOT NULL,
    settled_at timestamptz,
    CONSTRAINT charges_split_adds_up CHECK (free_tokens + additional_tokens = tokens),
    CONSTRAINT charges_settled_iff_not_held CHECK ((state = 'held') = (settled_at IS NULL)),
    CONSTRAINT charges_team_key_unique UNIQUE (team_id, idempotency_key),
    FOREIGN KEY (team_id, period_start) REFERENCES billing_months (team_id, period_start)
);

-- The hold-expiry sweep scans only what is still held.
CREATE INDEX charges_held_at_idx ON charges (held_at) WHERE state = 'held';
-- History and "has this month settled?" per team and month.
CREATE INDEX charges_team_period_idx ON charges (team_id, period_start, id);

CREATE TABLE limit_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_id text NOT NULL REFERENCES teams (id),
    actor text NOT NULL CONSTRAINT limit_changes_actor_valid CHECK (actor <> ''),
    role text NOT NULL CONSTRAINT limit_changes_role_admin CHECK (role = 'admin'),
    old_limit bigint NOT NULL,
    new_limit bigint NOT NULL CONSTRAINT limit_changes_new_nonneg CHECK (new_limit >= 0),
    changed_at timestamptz NOT NULL
);

CREATE INDEX limit_changes_team_idx ON limit_changes (team_id, id);
