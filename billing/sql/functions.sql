-- Making bills: the one place where tokens become billed.
--
-- Each bill is inserted in the same statement's transaction that raises
-- billing_months.additional_billed by its tokens, on the locked month row, so
-- two reconcilers at once serialise on that row and the second finds nothing
-- left to bill. Sending to Stripe happens afterwards (billing/sender.py).
-- Amounts use tokens_minor_units (ledger/sql/periods.sql).

DROP FUNCTION IF EXISTS tokens_create_bills(text, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_reissue_bill(bigint, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_reissue_bill(bigint, timestamptz, uuid) CASCADE;

-- Bill what is due at p_at, for one team or all (p_team NULL):
--   threshold: a month's unbilled spent additional tokens are worth at least
--              the plan's threshold -> bill all of them;
--   month_end: the month has ended and none of its holds is still held ->
--              bill whatever is left, and mark the month closed.
CREATE FUNCTION tokens_create_bills(p_team text, p_at timestamptz)
RETURNS SETOF bills
LANGUAGE plpgsql AS $$
DECLARE
    k record;
    m record;
    unbilled bigint;
    amount bigint;
    ended boolean;
    b bills;
BEGIN
    FOR k IN
        SELECT bm.team_id, bm.period_start
          FROM billing_months bm
         WHERE (p_team IS NULL OR bm.team_id = p_team)
           AND bm.period_start <= p_at
           AND (bm.additional_spent > bm.additional_billed
                OR (bm.period_end <= p_at AND bm.closed_at IS NULL))
         ORDER BY bm.team_id, bm.period_start
    LOOP
        -- Lock, then decide on what is there now (another run may have billed it).
        -- The month's own price (fixed when it opened); the plan's threshold now.
        SELECT bm.*, p.threshold_cents INTO m
          FROM billing_months bm
          JOIN teams t ON t.id = bm.team_id
          JOIN plans p ON p.name = t.plan
         WHERE bm.team_id = k.team_id AND bm.period_start = k.period_start
           FOR NO KEY UPDATE OF bm;
        unbilled := m.additional_spent - m.additional_billed;
        ended := m.period_end <= p_at AND NOT EXISTS (
            SELECT 1 FROM charges c
             WHERE c.team_id = m.team_id AND c.period_start = m.period_start
               AND c.state = 'held');
        CONTINUE WHEN NOT ended
            AND unbilled * m.unit_price * tokens_minor_units(m.currency) < m.threshold_cents;
        IF unbilled > 0 THEN
            -- amount_cents is in the currency's minor unit (yen for JPY, not x100).
            -- Rounded on the month's running total, not bill by bill: at a price
            -- below the minor unit (0.015 USD a token) a threshold bill and the
            -- month-end bill then add up to the month's exact amount, rounded once.
            amount := round(m.additional_spent * m.unit_price * tokens_minor_units(m.currency))
                      - round(m.additional_billed * m.unit_price * tokens_minor_units(m.currency));
            -- A remainder worth less than half a minor unit rounds to 0: never sent as
            -- a 0 invoice. Its tokens are still billed, by a bill of 0 that is `paid`
            -- at once with no invoice (README "Billing with Stripe", Prices), so that every token is on
            -- exactly one bill and the month closes.
            INSERT INTO bills (team_id, period_start, period_end, reason, tokens, unit_price,
                               amount_cents, currency, created_at, updated_at, status)
            VALUES (m.team_id, m.period_start, m.period_end,
                    CASE WHEN ended THEN 'month_end' ELSE 'threshold' END,
                    unbilled, m.unit_price, amount, m.currency, p_at, p_at,
                    CASE WHEN amount = 0 THEN 'paid' ELSE 'sending' END)
            RETURNING * INTO b;
            -- The charges whose additional tokens this bill bills: every captured one
            -- of the month not billed yet. Captures lock this month row too, so the
            -- set is exactly what made additional_spent - additional_billed.
            -- "Not billed yet" is the primary key's arbiter (ON CONFLICT), one probe
            -- per charge whatever the plan. A NOT EXISTS anti-join planned while
            -- bill_charges is small (a new deployment, before its first month's
            -- end) scans every link made so far for each bill, and this loop makes
            -- every team's bill in one transaction: quadratic in the teams
            -- (docs/decisions.md, "Bills").
            INSERT INTO bill_charges (charge_id, bill_id)
            SELECT c.id, b.id FROM charges c
             WHERE c.team_id = m.team_id AND c.period_start = m.period_start
               AND c.state = 'captured' AND c.additional_tokens > 0
            ON CONFLICT (charge_id) DO NOTHING;
            RETURN NEXT b;
        END IF;
        UPDATE billing_months bm
           SET additional_billed = bm.additional_spent,
               closed_at = CASE WHEN ended THEN coalesce(bm.closed_at, p_at) ELSE bm.closed_at END
         WHERE bm.team_id = m.team_id AND bm.period_start = m.period_start;
    END LOOP;
END
$$;

-- `tokens bill reissue`: the same tokens on a new bill (sent to the team's current
-- customer by the next reconcile run); the old bill keeps its history and becomes
-- `reissued`. Only a bill that can collect nothing any more may be reissued:
-- void at Stripe, uncollectible or failed for good (customer deleted, total
-- mismatch) once billing/bills.py made its invoice uncollectible at Stripe, or
-- failed before anything reached Stripe. p_token: the lease reissue holds on the
-- bill meanwhile (a run's lease refuses). SQLSTATE TK010 (DETAIL = bill id): not
-- found; TK011 (DETAIL = status): refused.
CREATE FUNCTION tokens_reissue_bill(p_bill bigint, p_at timestamptz, p_token uuid)
RETURNS SETOF bills
LANGUAGE plpgsql AS $$
DECLARE
    old bills;
    b bills;
BEGIN
    SELECT * INTO old FROM bills WHERE id = p_bill FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown bill %', p_bill USING ERRCODE = 'TK010', DETAIL = p_bill;
    END IF;
    IF old.lease_until > clock_timestamp() AND old.lease_token IS DISTINCT FROM p_token THEN
        RAISE EXCEPTION 'bill % is being sent by a reconcile run right now; try again later',
            p_bill USING ERRCODE = 'TK011', DETAIL = old.status;
    END IF;
    IF NOT (old.status = 'void'
            OR (old.status = 'uncollectible' AND p_token IS NOT NULL)
            OR (old.status = 'failed'
                AND (old.error_code IN ('customer_deleted', 'total_mismatch')
                     OR old.step = 'created'))) THEN
        RAISE EXCEPTION '%', CASE old.status
            WHEN 'reissued' THEN format('bill %s was reissued already (as bill %s)', p_bill,
                                        (SELECT r.id FROM bills r WHERE r.reissue_of = p_bill))
            WHEN 'paid' THEN format('bill %s is paid: nothing to reissue', p_bill)
            WHEN 'failed' THEN format(
                'bill %s failed with %s and is retried by itself; only a void bill, or one '
                'failed with customer_deleted or total_mismatch, can be reissued',
                p_bill, coalesce(old.error_code, 'an error'))
            ELSE format(
                'bill %s is %s: only a void bill, or one failed with customer_deleted or '
                'total_mismatch, can be reissued (void its invoice in Stripe first)',
                p_bill, old.status) END
            USING ERRCODE = 'TK011', DETAIL = old.status;
    END IF;
    INSERT INTO bills (team_id, period_start, period_end, reason, tokens, unit_price,
                       amount_cents, currency, created_at, updated_at, reissue_of)
    VALUES (old.team_id, old.period_start, old.period_end, old.reason, old.tokens,
            old.unit_price, old.amount_cents, old.currency, p_at, p_at, old.id)
    RETURNING * INTO b;
    UPDATE bills SET status = 'reissued', updated_at = p_at, lease_until = NULL,
                     lease_token = NULL, next_pay_at = NULL
     WHERE id = old.id;
    RETURN NEXT b;
END
$$;
