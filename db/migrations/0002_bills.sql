-- Bills: the outbox of additional tokens to charge through Stripe.
-- A bill is written in the same transaction that marks its tokens billed
-- (billing_months.additional_billed), before anything is sent. Sending is a
-- resumable state machine: `step` is the last Stripe step known to be done,
-- and every Stripe id is recorded as soon as it is known.

CREATE TABLE bills (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Names the bill at Stripe (idempotency keys, metadata): unique across
    -- databases, so a reset demo or a second environment on the same Stripe
    -- account can never replay another bill's invoice.
    public_id uuid NOT NULL DEFAULT gen_random_uuid() CONSTRAINT bills_public_id_key UNIQUE,
    team_id text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    reason text NOT NULL CONSTRAINT bills_reason_valid CHECK (reason IN ('threshold', 'month_end')),
    tokens bigint NOT NULL CONSTRAINT bills_tokens_pos CHECK (tokens > 0),
    unit_price numeric(12, 6) NOT NULL CONSTRAINT bills_unit_price_pos CHECK (unit_price > 0),
    amount_cents bigint NOT NULL CONSTRAINT bills_amount_nonneg CHECK (amount_cents >= 0),
    currency text NOT NULL,
    step text NOT NULL DEFAULT 'created'
        CONSTRAINT bills_step_valid
        CHECK (step IN ('created', 'invoice_created', 'item_added', 'finalized', 'paid')),
    stripe_customer text,
    stripe_invoice_id text,
    stripe_invoice_item_id text,
    stripe_invoice_status text,
    attempts integer NOT NULL DEFAULT 0,
    pay_attempts integer NOT NULL DEFAULT 0,
    last_error text,
    error_code text,
    lease_until timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    sent_at timestamptz,
    CONSTRAINT bills_invoice_once_created
        CHECK (step = 'created' OR stripe_invoice_id IS NOT NULL),
    CONSTRAINT bills_item_once_added
        CHECK (step IN ('created', 'invoice_created') OR stripe_invoice_item_id IS NOT NULL),
    FOREIGN KEY (team_id, period_start) REFERENCES billing_months (team_id, period_start)
);

-- Bills still to send, oldest first.
CREATE INDEX bills_unsent_idx ON bills (id) WHERE step <> 'paid';
CREATE INDEX bills_team_idx ON bills (team_id, id);
-- Months with spent additional tokens not yet billed: the reconciler's scan.
CREATE INDEX billing_months_unbilled_idx ON billing_months (period_end)
    WHERE additional_spent > additional_billed;
-- Months not yet closed by a month-end run.
CREATE INDEX billing_months_open_idx ON billing_months (period_end) WHERE closed_at IS NULL;
