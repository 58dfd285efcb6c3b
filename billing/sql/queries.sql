-- Statements of the billing package, by name (parsed by ledger/queries.py).

-- create_bills --
SELECT * FROM tokens_create_bills($1, $2)

-- bills_to_send --
-- Everything not yet paid, oldest first; for one team when $1 is not NULL.
SELECT b.id FROM bills b
WHERE b.step <> 'paid' AND ($1::text IS NULL OR b.team_id = $1)
ORDER BY b.id

-- claim_bill --
-- A lease, so two reconcilers never send the same bill at the same time.
-- The attempt is counted before anything reaches Stripe: attempts > 0 means
-- Stripe may hold objects of this bill that we never heard back about.
UPDATE bills b
SET lease_until = clock_timestamp() + make_interval(secs => $2),
    attempts = b.attempts + 1,
    -- The team's customer is taken while nothing exists at Stripe yet (a team may
    -- get or fix its customer after a failed send); once the invoice exists the
    -- bill stays with the customer that invoice belongs to.
    stripe_customer = CASE WHEN b.step = 'created' THEN t.stripe_customer
                           ELSE b.stripe_customer END
FROM teams t
WHERE b.id = $1 AND t.id = b.team_id AND b.step <> 'paid'
  AND (b.lease_until IS NULL OR b.lease_until < clock_timestamp())
RETURNING b.*

-- record_step --
-- A paid bill is done: its lease ends in the same write (no separate release).
UPDATE bills
SET step = $2, stripe_invoice_id = coalesce($3, stripe_invoice_id),
    stripe_invoice_item_id = coalesce($4, stripe_invoice_item_id),
    stripe_invoice_status = coalesce($5, stripe_invoice_status),
    last_error = NULL, error_code = NULL, updated_at = $6,
    sent_at = CASE WHEN $2 IN ('finalized', 'paid') THEN coalesce(sent_at, $6) ELSE sent_at END,
    lease_until = CASE WHEN $2 = 'paid' THEN NULL ELSE lease_until END
WHERE id = $1
RETURNING *

-- record_invoice_status --
UPDATE bills SET stripe_invoice_status = $2, updated_at = $3 WHERE id = $1 RETURNING *

-- count_pay_attempt --
UPDATE bills SET pay_attempts = pay_attempts + 1 WHERE id = $1 RETURNING pay_attempts

-- record_error --
UPDATE bills SET last_error = $2, error_code = $3, updated_at = $4 WHERE id = $1 RETURNING *

-- release_lease --
UPDATE bills SET lease_until = NULL WHERE id = $1

-- get_bill --
SELECT * FROM bills WHERE id = $1

-- team_bills --
SELECT * FROM bills WHERE team_id = $1 ORDER BY id

-- all_bills --
SELECT * FROM bills ORDER BY id
