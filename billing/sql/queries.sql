-- Statements of the billing package, by name (parsed by db/queries.py).
--
-- Every write of a sending run names the lease token of its claim ($2 below):
-- a run that stalled past its lease, and whose bill another run claimed since,
-- changes nothing (0 rows) and stops. Every write also names the status the run
-- last read (its last parameter): a webhook may change the status meanwhile
-- without the lease, and a run's write must never turn that newer status back
-- into the older one it read (0 rows: the run re-reads the bill and stops).

-- create_bills --
SELECT * FROM tokens_create_bills($1, $2)

-- bills_to_send --
-- Bills with work left, oldest first; for one team when $1 is not NULL. A bill
-- whose customer was deleted waits for a reissue. A total mismatch is read at every
-- run: the bill resumes on its invoice once finance fixed it (or follows it once
-- finance finalized it).
SELECT b.id, b.status, b.stripe_invoice_id, b.stripe_invoice_created FROM bills b
WHERE b.status IN ('unsent', 'sending', 'failed', 'open', 'payment_failed', 'uncollectible')
  AND NOT (b.status = 'failed' AND b.error_code = 'customer_deleted')
  AND ($1::text IS NULL OR b.team_id = $1)
ORDER BY b.id

-- claim_bill --
-- A lease with a fresh fencing token, so two reconcilers never work on the same
-- bill at the same time, and a stalled one cannot write after another claimed.
-- The attempt is counted before anything reaches Stripe: attempts > 1 means
-- Stripe may hold objects of this bill that we never heard back about.
UPDATE bills b
SET lease_until = clock_timestamp() + make_interval(secs => $2),
    lease_token = gen_random_uuid(),
    attempts = b.attempts + 1,
    -- The team's customer is taken while nothing exists at Stripe yet (a team may
    -- get or fix its customer after a failed send); once the invoice exists the
    -- bill stays with the customer that invoice belongs to.
    stripe_customer = CASE WHEN b.step = 'created' THEN t.stripe_customer
                           ELSE b.stripe_customer END
FROM teams t
WHERE b.id = $1 AND t.id = b.team_id
  AND b.status IN ('unsent', 'sending', 'failed', 'open', 'payment_failed', 'uncollectible')
  AND (b.lease_until IS NULL OR b.lease_until < clock_timestamp())
RETURNING b.*

-- record_step --
-- $3 step, $4 status, $5 invoice id, $6 item id, $7 Stripe invoice status,
-- $8 collection method, $9 invoice created (Stripe's clock), $10 now,
-- $11 next pay time (NULL: none), $12 true: the lease ends with this write,
-- $13 the status the run read.
UPDATE bills
SET step = $3, status = $4,
    stripe_invoice_id = coalesce($5, stripe_invoice_id),
    stripe_invoice_item_id = coalesce($6, stripe_invoice_item_id),
    stripe_invoice_status = coalesce($7, stripe_invoice_status),
    collection_method = coalesce($8, collection_method),
    stripe_invoice_created = coalesce($9, stripe_invoice_created),
    last_error = NULL, error_code = NULL, updated_at = $10,
    sent_at = CASE WHEN $3 IN ('finalized', 'paid') THEN coalesce(sent_at, $10) ELSE sent_at END,
    next_pay_at = $11,
    lease_until = CASE WHEN $12 THEN NULL ELSE lease_until END,
    lease_token = CASE WHEN $12 THEN NULL ELSE lease_token END
WHERE id = $1 AND lease_token = $2 AND status = $13
RETURNING *

-- record_decline --
-- $3 decline code, $4 message, $5 now, $6 next pay time (NULL: stop paying), $7 the
-- status the run read, $8 the key generation the declined pay used. A decline is
-- counted once per key generation, and the generation moves on with it: Stripe
-- replays a saved 402 under its key for 24 h, and a replay is not a new decline.
UPDATE bills
SET status = 'payment_failed', decline_code = $3, declines = declines + 1,
    last_declined_at = $5, next_pay_at = $6, last_error = $4, error_code = 'card_declined',
    key_gen = key_gen + 1, updated_at = $5
WHERE id = $1 AND lease_token = $2 AND status = $7 AND key_gen = $8
RETURNING *

-- record_stripe_declines --
-- Stripe's own collection failed: $3 attempts on the invoice so far, $4 message,
-- $5 now, $6 next pay time (NULL: stop paying), $7 the status the run read. Its
-- decline code is not on the invoice: a code already kept (one of our own pays)
-- stays. The key generation moves on: the attempt counted may be a pay of ours whose
-- answer was lost, saved at Stripe under the current key.
UPDATE bills
SET status = 'payment_failed', declines = $3, last_declined_at = $5, next_pay_at = $6,
    last_error = $4, error_code = 'card_declined', key_gen = key_gen + 1, updated_at = $5
WHERE id = $1 AND lease_token = $2 AND status = $7
RETURNING *

-- count_pay_attempt --
-- Right before a pay request: only for a bill still open or payment_failed, in the
-- status the run read ($3) after it claimed the bill.
UPDATE bills SET pay_attempts = pay_attempts + 1
WHERE id = $1 AND lease_token = $2 AND status = $3
  AND status IN ('open', 'payment_failed')
RETURNING pay_attempts

-- record_error --
-- $3 message, $4 code, $5 now, $6 status, $7 true: the key was answered with a
-- saved error (the next attempt takes new keys), $8 next pay time, $9 the status
-- the run read.
UPDATE bills
SET last_error = $3, error_code = $4, updated_at = $5, status = $6,
    key_gen = CASE WHEN $7 THEN key_gen + 1 ELSE key_gen END,
    next_pay_at = $8
WHERE id = $1 AND lease_token = $2 AND status = $9
RETURNING *

-- release_lease --
UPDATE bills SET lease_until = NULL, lease_token = NULL WHERE id = $1 AND lease_token = $2

-- get_bill --
SELECT * FROM bills WHERE id = $1

-- team_bills --
SELECT * FROM bills WHERE team_id = $1 ORDER BY id

-- all_bills --
SELECT * FROM bills ORDER BY id

-- list_bills --
-- `tokens bills`: $1 team or NULL, $2 status or NULL.
SELECT b.*, r.id AS reissued_as
FROM bills b LEFT JOIN bills r ON r.reissue_of = b.id
WHERE ($1::text IS NULL OR b.team_id = $1) AND ($2::text IS NULL OR b.status = $2)
ORDER BY b.id

-- show_bill --
SELECT b.*, r.id AS reissued_as
FROM bills b LEFT JOIN bills r ON r.reissue_of = b.id
WHERE b.id = $1

-- bill_charges --
-- The charges a bill billed. A reissued bill bills the charges of the bill it
-- was first made as (the root of its reissue chain).
WITH RECURSIVE chain AS (
    SELECT id, reissue_of FROM bills WHERE id = $1
    UNION ALL
    SELECT b.id, b.reissue_of FROM bills b JOIN chain ON b.id = chain.reissue_of
)
SELECT c.id AS charge_id, c.action, c.quantity, c.additional_tokens, c.job_id, c.lead_id,
       c.held_at, c.settled_at
FROM chain
JOIN bill_charges bc ON bc.bill_id = chain.id
JOIN charges c ON c.id = bc.charge_id
WHERE chain.reissue_of IS NULL
ORDER BY c.id

-- reissue_bill --
SELECT * FROM tokens_reissue_bill($1, $2, $3)

-- claim_for_reissue --
-- `tokens bill reissue` holds the bill (as a run does) while it acts on the old
-- invoice at Stripe, so that no reconcile run sends or pays it meanwhile.
UPDATE bills
SET lease_until = clock_timestamp() + make_interval(secs => $2),
    lease_token = gen_random_uuid()
WHERE id = $1 AND (lease_until IS NULL OR lease_until < clock_timestamp())
RETURNING *

-- follow_paid --
-- The old invoice was paid with the bill's amount: the bill is paid, nothing to
-- reissue ($3: the status read).
UPDATE bills
SET status = 'paid', stripe_invoice_status = 'paid', last_error = NULL, error_code = NULL,
    step = CASE WHEN stripe_invoice_item_id IS NOT NULL THEN 'paid' ELSE step END,
    next_pay_at = NULL
WHERE id = $1 AND lease_token = $2 AND status = $3
RETURNING *
