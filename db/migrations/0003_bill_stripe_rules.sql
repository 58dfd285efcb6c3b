-- Bills against Stripe as it really behaves (README, "Billing with Stripe").
--
-- * `status`: what finance reads (unsent, sending, open, paid, payment_failed,
--   void, uncollectible, failed, reissued), kept by the sender in the same
--   write as the step it reached.
-- * `lease_token`: a fencing token, new at every claim; every write of a sending
--   run names it, so a run that stalled past its lease writes nothing.
-- * `key_gen`: the generation of the bill's Stripe idempotency keys. A step
--   reuses its key across attempts; the generation moves on only when Stripe
--   answered a key with an error (which Stripe keeps under that key for 24 h).
-- * payment: how the invoice is collected, and the decline policy's state.
-- * `reissue_of`: `tokens bill reissue` makes a new bill for the same tokens;
--   the old one keeps its history, with status `reissued`.
-- * `bill_charges`: which bill billed each charge's additional tokens, written
--   in the transaction that makes the bill.

ALTER TABLE bills
    ADD COLUMN status text NOT NULL DEFAULT 'sending'
        CONSTRAINT bills_status_valid CHECK (status IN (
            'unsent', 'sending', 'open', 'paid', 'payment_failed', 'void', 'uncollectible',
            'failed', 'reissued')),
    ADD COLUMN lease_token uuid,
    ADD COLUMN key_gen integer NOT NULL DEFAULT 1,
    ADD COLUMN collection_method text
        CONSTRAINT bills_collection_method_valid
        CHECK (collection_method IN ('charge_automatically', 'send_invoice')),
    ADD COLUMN stripe_invoice_created bigint,
    ADD COLUMN decline_code text,
    ADD COLUMN declines integer NOT NULL DEFAULT 0,
    ADD COLUMN last_declined_at timestamptz,
    ADD COLUMN next_pay_at timestamptz,
    ADD COLUMN reissue_of bigint REFERENCES bills (id);

UPDATE bills SET
    status = CASE WHEN step = 'paid' THEN 'paid'
                  WHEN error_code = 'stripe_not_configured' THEN 'unsent'
                  WHEN last_error IS NOT NULL THEN 'failed'
                  WHEN step = 'finalized' THEN 'open'
                  ELSE 'sending' END,
    collection_method = CASE WHEN stripe_invoice_id IS NOT NULL THEN 'charge_automatically' END;

DROP INDEX bills_unsent_idx;
-- Bills a reconcile run still has work on (sending, reading Stripe's status).
CREATE INDEX bills_active_idx ON bills (id)
    WHERE status IN ('unsent', 'sending', 'failed', 'open', 'payment_failed', 'uncollectible');
CREATE INDEX bills_status_idx ON bills (status, id);
-- A bill is reissued at most once.
CREATE UNIQUE INDEX bills_reissue_of_key ON bills (reissue_of) WHERE reissue_of IS NOT NULL;

CREATE TABLE bill_charges (
    charge_id bigint PRIMARY KEY REFERENCES charges (id),
    bill_id bigint NOT NULL REFERENCES bills (id)
);
CREATE INDEX bill_charges_bill_idx ON bill_charges (bill_id, charge_id);

-- Bills made before this migration: their charges, reconstructed. Within a
-- month, bills billed the captured additional tokens in the order they were
-- settled; each charge goes to the bill whose running total it starts in.
INSERT INTO bill_charges (charge_id, bill_id)
SELECT c.id, b.id
  FROM (SELECT c.id, c.team_id, c.period_start,
               sum(c.additional_tokens) OVER w - c.additional_tokens AS before
          FROM charges c
         WHERE c.state = 'captured' AND c.additional_tokens > 0
        WINDOW w AS (PARTITION BY c.team_id, c.period_start ORDER BY c.settled_at, c.id)) c
  JOIN (SELECT b.id, b.team_id, b.period_start,
               sum(b.tokens) OVER w - b.tokens AS first, sum(b.tokens) OVER w AS last
          FROM bills b
        WINDOW w AS (PARTITION BY b.team_id, b.period_start ORDER BY b.id)) b
    ON b.team_id = c.team_id AND b.period_start = c.period_start
   AND c.before >= b.first AND c.before < b.last;
