-- Stripe webhooks (README, "The HTTP API and the billing page"): every event stored by its id and handled once.
-- A delivery inserts the event (or counts a redelivery); handling locks the row,
-- so two deliveries of one event never both act on it.

CREATE TABLE stripe_events (
    id text PRIMARY KEY CONSTRAINT stripe_events_id_valid CHECK (id <> ''),
    type text NOT NULL,
    object_id text,
    livemode boolean NOT NULL,
    -- The event's `created` at Stripe; the order of delivery is not the order of events.
    created_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    deliveries integer NOT NULL DEFAULT 1 CONSTRAINT stripe_events_deliveries_pos CHECK (deliveries > 0),
    handled_at timestamptz,
    result text,
    payload jsonb NOT NULL,
    CONSTRAINT stripe_events_handled_with_result CHECK ((handled_at IS NULL) = (result IS NULL))
);

CREATE INDEX stripe_events_unhandled_idx ON stripe_events (received_at) WHERE handled_at IS NULL;

-- A team's Stripe subscription, as the webhooks last read it. A subscription that
-- ended stops the team's grants and additional tokens in every billing month that
-- starts at or after its end (sql/functions.sql: tokens_open_month, tokens_month_limit);
-- `tokens team set` (or a new subscription) makes the team current again.
ALTER TABLE teams ADD COLUMN stripe_subscription text;
ALTER TABLE teams ADD COLUMN subscription_ended_at timestamptz;
