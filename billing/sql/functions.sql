-- Making bills: the one place where tokens become billed.
--
-- Each bill is inserted in the same statement's transaction that raises
-- billing_months.additional_billed by its tokens, on the locked month row, so
-- two reconcilers at once serialise on that row and the second finds nothing
-- left to bill. Sending to Stripe happens afterwards (billing/sender.py).

DROP FUNCTION IF EXISTS tokens_create_bills(text, timestamptz) CASCADE;

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
        SELECT bm.*, p.unit_price, p.threshold_cents, p.currency INTO m
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
            AND unbilled * m.unit_price * 100 < m.threshold_cents;
        IF unbilled > 0 THEN
            INSERT INTO bills (team_id, period_start, period_end, reason, tokens, unit_price,
                               amount_cents, currency, created_at, updated_at)
            VALUES (m.team_id, m.period_start, m.period_end,
                    CASE WHEN ended THEN 'month_end' ELSE 'threshold' END,
                    unbilled, m.unit_price, round(unbilled * m.unit_price * 100), m.currency,
                    p_at, p_at)
            RETURNING * INTO b;
            RETURN NEXT b;
        END IF;
        UPDATE billing_months bm
           SET additional_billed = bm.additional_spent,
               closed_at = CASE WHEN ended THEN coalesce(bm.closed_at, p_at) ELSE bm.closed_at END
         WHERE bm.team_id = m.team_id AND bm.period_start = m.period_start;
    END LOOP;
END
$$;
