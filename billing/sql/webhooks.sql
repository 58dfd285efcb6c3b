-- Statements of billing/webhooks.py, by name (parsed by ledger/queries.py).

-- record_event --
-- A delivery: the event is stored once by its id; a redelivery is counted.
INSERT INTO stripe_events (id, type, object_id, livemode, created_at, received_at, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET deliveries = stripe_events.deliveries + 1
RETURNING handled_at IS NOT NULL AS handled, result

-- lock_event --
-- Taken while the event is handled: a concurrent delivery of it waits, then sees it handled.
SELECT handled_at, result FROM stripe_events WHERE id = $1 FOR UPDATE

-- event_handled --
UPDATE stripe_events SET handled_at = $2, result = $3 WHERE id = $1

-- set_subscription --
UPDATE teams SET stripe_subscription = $2 WHERE id = $1

-- end_subscription --
-- Only the team's own subscription ends it (an old subscription's late cancellation
-- does not end the one that replaced it).
UPDATE teams SET subscription_ended_at = $3, updated_at = $4
WHERE id = $1 AND (stripe_subscription IS NULL OR stripe_subscription = $2)
RETURNING id

-- invoice_news --
-- What Stripe says of a bill's invoice now. Paid ends the sending (the reconciler finds the
-- same when it reads Stripe); a failed payment, a void or uncollectible invoice is kept on
-- the bill with its code for the reconciler and finance.
UPDATE bills
SET stripe_invoice_status = $2,
    step = CASE WHEN $2 = 'paid' AND stripe_invoice_item_id IS NOT NULL THEN 'paid' ELSE step END,
    lease_until = CASE WHEN $2 = 'paid' AND stripe_invoice_item_id IS NOT NULL THEN NULL
                       ELSE lease_until END,
    error_code = $3,
    last_error = $4,
    updated_at = $5
WHERE stripe_invoice_id = $1
RETURNING id
