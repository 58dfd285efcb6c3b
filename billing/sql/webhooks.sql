-- Statements of billing/webhooks.py, by name (parsed by db/queries.py).

-- record_event --
-- A delivery: the event is stored once by its id; a redelivery is counted.
INSERT INTO stripe_events (id, type, object_id, livemode, created_at, received_at, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET deliveries = stripe_events.deliveries + 1
RETURNING handled_at IS NOT NULL AS handled, result

-- lock_event --
-- Taken while the event is handled (a short transaction: Stripe was read before it):
-- a concurrent delivery of it waits, then sees it handled.
SELECT handled_at, result FROM stripe_events WHERE id = $1 FOR UPDATE

-- event_handled --
UPDATE stripe_events SET handled_at = $2, result = $3 WHERE id = $1

-- lock_team_events --
-- Subscription events of one team are applied one at a time, to the end of their
-- transaction (an advisory lock: the team may not exist yet).
SELECT pg_advisory_xact_lock(hashtextextended('tokens.team_subscription:' || $1, 0))

-- team_subscription --
-- The subscription the team follows, and when Stripe created it. NO KEY: the
-- lock order in ledger/sql/holds.sql (a team set follows, which locks the month).
SELECT stripe_subscription, subscription_created, subscription_ended_at
FROM teams WHERE id = $1 FOR NO KEY UPDATE

-- follow_subscription --
-- The team follows subscription $2 (created $3 at Stripe) from now on: current, not ended.
UPDATE teams
SET stripe_subscription = $2, subscription_created = coalesce($3, subscription_created),
    subscription_ended_at = NULL
WHERE id = $1

-- end_subscription --
-- The team's subscription $2 ended at $3 (the caller decided it is the team's).
UPDATE teams
SET stripe_subscription = $2, subscription_created = coalesce($5, subscription_created),
    subscription_ended_at = $3, updated_at = $4
WHERE id = $1
RETURNING id

-- invoice_news --
-- What Stripe says of a bill's invoice now ($2 the bill's status, $3 Stripe's invoice
-- status). The sending state machine and its lease are the sender's: a paid invoice
-- only ends its steps; a reconciler holding the bill reads the same from Stripe.
-- A reissued bill keeps `reissued` (the result tells what Stripe said). Stripe never
-- moves a paid or void invoice again, nor an uncollectible one back to open: a reading
-- that says so is older than the one already written (two deliveries of one invoice
-- handled at once, each having read Stripe at another moment), and changes nothing.
UPDATE bills
SET status = $2,
    stripe_invoice_status = $3,
    step = CASE WHEN $2 = 'paid' AND stripe_invoice_item_id IS NOT NULL THEN 'paid' ELSE step END,
    error_code = CASE WHEN $2 = 'paid' THEN NULL ELSE coalesce($4, error_code) END,
    last_error = CASE WHEN $2 = 'paid' THEN NULL ELSE coalesce($5, last_error) END,
    next_pay_at = CASE WHEN $2 IN ('paid', 'void', 'uncollectible') THEN NULL
                       ELSE next_pay_at END,
    updated_at = $6
WHERE stripe_invoice_id = $1 AND status <> 'reissued'
  AND (status = $2 OR status NOT IN ('paid', 'void', 'uncollectible')
       OR (status = 'uncollectible' AND $3 IN ('paid', 'void')))
RETURNING id

-- invoice_bill --
SELECT id, status, amount_cents, currency FROM bills WHERE stripe_invoice_id = $1
ORDER BY id DESC LIMIT 1
