-- The money path, in the database where the balances are.
--
-- Re-applied by `tokens migrate` whenever this file changes (after the
-- versioned migrations, in the same transaction). Python never does
-- arithmetic on a balance it read earlier: every change below is one
-- statement on the locked billing-month row, and the table CHECKs make a
-- wrong balance impossible.
--
-- Lock order, everywhere: teams -> billing_months -> charges (new rows).
-- Settling locks the charge first, then its month; it never needs a team lock.
--
-- Errors raised on purpose carry SQLSTATE TK0xx (translated in ledger/errors.py):
--   TK001 unknown team (DETAIL = team id)     TK002 idempotency key reused with other parameters
--   TK003 unknown charge (DETAIL = charge id) TK004 charge already settled otherwise
--   TK005 anchor change conflicts with billing months already opened

DROP FUNCTION IF EXISTS tokens_add_months(timestamptz, integer) CASCADE;
DROP FUNCTION IF EXISTS tokens_period(timestamptz, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_grant(plans, integer, boolean) CASCADE;
DROP FUNCTION IF EXISTS tokens_open_month(text, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_hold(text, text, text, integer, bigint, timestamptz, text, text)
    CASCADE;
DROP FUNCTION IF EXISTS tokens_settle(bigint, text, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_expire_holds(timestamptz, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_set_team(text, text, integer, text, timestamptz, text, timestamptz)
    CASCADE;

-- anchor + n months, Stripe's rule: the anchor's day, clamped to the month's
-- last day (Jan 31 -> Feb 28/29, Mar 31, Apr 30), always from the anchor so
-- a short month never shifts later ones. UTC, whatever the session's zone.
CREATE FUNCTION tokens_add_months(p_anchor timestamptz, p_months integer)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN ((p_anchor AT TIME ZONE 'UTC') + make_interval(months => p_months)) AT TIME ZONE 'UTC';

-- The billing month of an anchor that contains p_at (start inclusive, end exclusive).
CREATE FUNCTION tokens_period(
    p_anchor timestamptz, p_at timestamptz,
    OUT period_start timestamptz, OUT period_end timestamptz
)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    a timestamp := p_anchor AT TIME ZONE 'UTC';
    t timestamp := p_at AT TIME ZONE 'UTC';
    n integer := (extract(year FROM t)::integer - extract(year FROM a)::integer) * 12
                 + extract(month FROM t)::integer - extract(month FROM a)::integer;
BEGIN
    -- n months after the anchor lands in p_at's calendar month; if that day
    -- is still ahead of p_at, p_at is in the month before.
    IF tokens_add_months(p_anchor, n) > p_at THEN
        n := n - 1;
    END IF;
    period_start := tokens_add_months(p_anchor, n);
    period_end := tokens_add_months(p_anchor, n + 1);
END
$$;

-- Free tokens a month grants for a plan and seat count.
CREATE FUNCTION tokens_grant(p_plan plans, p_seats integer, p_once_granted boolean)
RETURNS bigint
LANGUAGE sql IMMUTABLE
RETURN CASE
    WHEN p_plan.once AND p_once_granted THEN 0
    WHEN p_plan.per_seat THEN p_plan.free_tokens * p_seats
    ELSE p_plan.free_tokens
END;

-- The billing month containing p_at, opened on first use (no cron needed).
-- Months never overlap: a computed period is clipped by the team's
-- neighbouring months (which an anchor change may have cut short).
CREATE FUNCTION tokens_open_month(p_team text, p_at timestamptz)
RETURNS billing_months
LANGUAGE plpgsql AS $$
DECLARE
    m billing_months;
    t teams;
    p plans;
    ps timestamptz;
    pe timestamptz;
    next_start timestamptz;
BEGIN
    SELECT * INTO m FROM billing_months
     WHERE team_id = p_team AND period_start <= p_at
     ORDER BY period_start DESC LIMIT 1;
    IF FOUND AND m.period_end > p_at THEN
        RETURN m;
    END IF;

    SELECT * INTO t FROM teams WHERE id = p_team FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown team %', p_team USING ERRCODE = 'TK001', DETAIL = p_team;
    END IF;
    -- Another transaction may have opened it while we waited for the team lock.
    SELECT * INTO m FROM billing_months
     WHERE team_id = p_team AND period_start <= p_at
     ORDER BY period_start DESC LIMIT 1;
    IF FOUND AND m.period_end > p_at THEN
        RETURN m;
    END IF;

    -- m, if any, is now the team's latest month before p_at.
    SELECT r.period_start, r.period_end INTO ps, pe FROM tokens_period(t.anchor, p_at) r;
    IF m.period_end > ps THEN
        ps := m.period_end;
    END IF;
    SELECT min(b.period_start) INTO next_start FROM billing_months b
     WHERE b.team_id = p_team AND b.period_start > p_at;
    IF next_start < pe THEN
        pe := next_start;
    END IF;

    SELECT * INTO p FROM plans WHERE name = t.plan;
    INSERT INTO billing_months (team_id, period_start, period_end, free_granted)
    VALUES (p_team, ps, pe, tokens_grant(p, t.seats, t.trial_granted))
    RETURNING * INTO m;
    IF p.once AND NOT t.trial_granted THEN
        UPDATE teams SET trial_granted = true WHERE id = p_team;
    END IF;
    RETURN m;
END
$$;

-- Hold tokens for one charge: free first, then additional up to the team's
-- limit; refused whole when short. Idempotent by (team, key): the same key
-- returns the same charge, whatever the clock; other parameters are an error.
CREATE FUNCTION tokens_hold(
    p_team text, p_key text, p_action text, p_quantity integer, p_tokens bigint,
    p_at timestamptz, p_job text, p_lead text,
    OUT charge_id bigint, OUT state text, OUT replayed boolean,
    OUT tokens bigint, OUT free_tokens bigint, OUT additional_tokens bigint,
    OUT period_start timestamptz, OUT period_end timestamptz, OUT held_at timestamptz,
    OUT free_available bigint, OUT additional_available bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    c charges;
    m billing_months;
    lim bigint;
    take_free bigint;
BEGIN
    -- A retry answers from the charge, without queueing on the month lock.
    SELECT * INTO c FROM charges WHERE team_id = p_team AND idempotency_key = p_key;
    IF NOT FOUND THEN
        m := tokens_open_month(p_team, p_at);
        SELECT * INTO m FROM billing_months
         WHERE team_id = p_team AND billing_months.period_start = m.period_start
         FOR NO KEY UPDATE;
        -- Re-check under the lock: a concurrent hold with this key may have committed.
        SELECT * INTO c FROM charges WHERE team_id = p_team AND idempotency_key = p_key;
    END IF;
    IF c.id IS NOT NULL THEN
        IF c.action <> p_action OR c.quantity <> p_quantity THEN
            RAISE EXCEPTION 'idempotency key % of team % was used for % x% (charge %), not % x%',
                p_key, p_team, c.action, c.quantity, c.id, p_action, p_quantity
                USING ERRCODE = 'TK002';
        END IF;
        SELECT b.period_end INTO period_end FROM billing_months b
         WHERE b.team_id = c.team_id AND b.period_start = c.period_start;
        charge_id := c.id; state := c.state; replayed := true; tokens := c.tokens;
        free_tokens := c.free_tokens; additional_tokens := c.additional_tokens;
        period_start := c.period_start; held_at := c.held_at;
        RETURN;
    END IF;

    SELECT CASE WHEN p.additional_allowed THEN t.additional_limit ELSE 0 END INTO lim
      FROM teams t JOIN plans p ON p.name = t.plan WHERE t.id = p_team;
    free_available := m.free_granted - m.free_held - m.free_spent;
    additional_available := greatest(lim - m.additional_held - m.additional_spent, 0);
    replayed := false; tokens := p_tokens;
    period_start := m.period_start; period_end := m.period_end;
    IF p_tokens > free_available + additional_available THEN
        state := 'refused'; free_tokens := 0; additional_tokens := 0;
        RETURN;
    END IF;

    take_free := least(p_tokens, free_available);
    INSERT INTO charges (team_id, period_start, idempotency_key, action, quantity, tokens,
                         free_tokens, additional_tokens, state, job_id, lead_id, held_at)
    VALUES (p_team, m.period_start, p_key, p_action, p_quantity, p_tokens,
            take_free, p_tokens - take_free, 'held', p_job, p_lead, p_at)
    RETURNING * INTO c;
    UPDATE billing_months b
       SET free_held = b.free_held + c.free_tokens,
           additional_held = b.additional_held + c.additional_tokens
     WHERE b.team_id = p_team AND b.period_start = m.period_start;

    charge_id := c.id; state := c.state; held_at := c.held_at;
    free_tokens := c.free_tokens; additional_tokens := c.additional_tokens;
    free_available := free_available - c.free_tokens;
    additional_available := additional_available - c.additional_tokens;
END
$$;

-- Settle a hold: 'captured' (the search happened: spent) or 'released' /
-- 'expired' (it never happened: tokens come back). Exactly once: repeating
-- the same settlement returns the charge unchanged; the other one is an error.
-- The charge stays in the billing month its hold was placed in.
CREATE FUNCTION tokens_settle(
    p_charge bigint, p_state text, p_at timestamptz,
    OUT charge charges, OUT changed boolean,
    OUT unbilled_additional bigint, OUT threshold_reached boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    m billing_months;
BEGIN
    IF p_state NOT IN ('captured', 'released', 'expired') THEN
        RAISE EXCEPTION 'cannot settle a charge as %', p_state USING ERRCODE = '22023';
    END IF;
    SELECT * INTO charge FROM charges WHERE id = p_charge FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown charge %', p_charge USING ERRCODE = 'TK003', DETAIL = p_charge;
    END IF;
    changed := false;
    IF charge.state = p_state THEN
        NULL;
    ELSIF charge.state <> 'held' THEN
        RAISE EXCEPTION 'charge % is already %, it cannot be %', p_charge, charge.state, p_state
            USING ERRCODE = 'TK004';
    ELSE
        UPDATE charges SET state = p_state, settled_at = p_at WHERE id = p_charge
        RETURNING * INTO charge;
        UPDATE billing_months b
           SET free_held = b.free_held - charge.free_tokens,
               additional_held = b.additional_held - charge.additional_tokens,
               free_spent = b.free_spent
                   + CASE WHEN p_state = 'captured' THEN charge.free_tokens ELSE 0 END,
               additional_spent = b.additional_spent
                   + CASE WHEN p_state = 'captured' THEN charge.additional_tokens ELSE 0 END
         WHERE b.team_id = charge.team_id AND b.period_start = charge.period_start;
        changed := true;
    END IF;
    SELECT b.additional_spent - b.additional_billed,
           (b.additional_spent - b.additional_billed) * p.unit_price * 100 >= p.threshold_cents
      INTO unbilled_additional, threshold_reached
      FROM billing_months b JOIN teams t ON t.id = b.team_id JOIN plans p ON p.name = t.plan
     WHERE b.team_id = charge.team_id AND b.period_start = charge.period_start;
END
$$;

-- Release holds placed before p_older_than and still held: their worker is
-- presumed dead (the TTL exceeds any job's timeout). One sweep at a time;
-- holds being settled right now are skipped, not waited for.
CREATE FUNCTION tokens_expire_holds(p_older_than timestamptz, p_at timestamptz)
RETURNS SETOF charges
LANGUAGE plpgsql AS $$
DECLARE
    cid bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tokens_expire_holds'));
    FOR cid IN
        SELECT id FROM charges
         WHERE state = 'held' AND held_at < p_older_than
         ORDER BY id
         FOR UPDATE SKIP LOCKED
    LOOP
        RETURN QUERY SELECT (s.charge).* FROM tokens_settle(cid, 'expired', p_at) s;
    END LOOP;
END
$$;

-- Create or update a team (SPEC section 2). A month's grant only grows: a
-- plan or seat change raises the current month's grant at once to what the
-- new plan x seats gives, never lowers it. A new anchor (a trial converting,
-- a new subscription) cuts the month it falls in short, so the next month
-- starts at the anchor; unspent free tokens end there.
CREATE FUNCTION tokens_set_team(
    p_team text, p_plan text, p_seats integer, p_interval text, p_anchor timestamptz,
    p_customer text, p_at timestamptz,
    OUT team teams, OUT created boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    old teams;
    m billing_months;
    p plans;
BEGIN
    SELECT * INTO old FROM teams WHERE id = p_team FOR UPDATE;
    created := NOT FOUND;
    IF created THEN
        INSERT INTO teams (id, plan, seats, billing_interval, anchor, stripe_customer,
                           created_at, updated_at)
        VALUES (p_team, p_plan, p_seats, p_interval, p_anchor, p_customer, p_at, p_at)
        RETURNING * INTO team;
        RETURN;
    END IF;

    IF p_anchor <> old.anchor THEN
        IF EXISTS (SELECT 1 FROM billing_months b
                    WHERE b.team_id = p_team AND b.period_start >= p_anchor) THEN
            RAISE EXCEPTION 'team % already has a billing month starting at or after the new anchor %',
                p_team, p_anchor USING ERRCODE = 'TK005';
        END IF;
        UPDATE billing_months b SET period_end = p_anchor
         WHERE b.team_id = p_team AND b.period_start < p_anchor AND b.period_end > p_anchor;
    END IF;

    UPDATE teams
       SET plan = p_plan, seats = p_seats, billing_interval = p_interval, anchor = p_anchor,
           stripe_customer = coalesce(p_customer, old.stripe_customer), updated_at = p_at
     WHERE id = p_team
    RETURNING * INTO team;

    SELECT * INTO m FROM billing_months b
     WHERE b.team_id = p_team AND b.period_start <= p_at AND b.period_end > p_at
     FOR NO KEY UPDATE;
    IF FOUND THEN
        SELECT * INTO p FROM plans WHERE name = p_plan;
        UPDATE billing_months b
           SET free_granted = greatest(b.free_granted, tokens_grant(p, p_seats, team.trial_granted))
         WHERE b.team_id = p_team AND b.period_start = m.period_start;
        IF p.once AND NOT team.trial_granted THEN
            UPDATE teams SET trial_granted = true WHERE id = p_team RETURNING * INTO team;
        END IF;
    END IF;
END
$$;
