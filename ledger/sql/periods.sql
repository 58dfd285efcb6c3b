-- Billing months: Stripe's month arithmetic, grants, limits, and a month opened on first use.
--
-- Re-applied by `tokens migrate` whenever this file changes (after the
-- versioned migrations, in the same transaction; db/migrate.py lists the files
-- in the order they are applied).

DROP FUNCTION IF EXISTS tokens_add_months(timestamptz, integer) CASCADE;
DROP FUNCTION IF EXISTS tokens_period(timestamptz, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_grant(plans, integer, boolean) CASCADE;
DROP FUNCTION IF EXISTS tokens_month_limit(teams, plans, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_open_month(text, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_minor_units(text) CASCADE;

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

-- The additional-token limit in force in a team's billing month: none on a plan
-- without additional tokens, nor in a month starting once its subscription ended.
CREATE FUNCTION tokens_month_limit(p_team teams, p_plan plans, p_period_start timestamptz)
RETURNS bigint
LANGUAGE sql IMMUTABLE
RETURN CASE
    WHEN NOT p_plan.additional_allowed THEN 0
    WHEN p_period_start >= p_team.subscription_ended_at THEN 0
    ELSE p_team.additional_limit
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

    -- NO KEY: the foreign-key checks of the month's writers must not wait for
    -- it (the lock order in holds.sql).
    SELECT * INTO t FROM teams WHERE id = p_team FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM tokens_raise('TK001', jsonb_build_object('team', p_team));
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
    -- The month keeps the price in force as it opens: its tokens are billed at it.
    INSERT INTO billing_months (team_id, period_start, period_end, free_granted, unit_price,
                                currency)
    VALUES (p_team, ps, pe, CASE WHEN ps >= t.subscription_ended_at THEN 0  -- subscription over
                                 ELSE tokens_grant(p, t.seats, t.trial_granted) END,
            p.unit_price, p.currency)
    RETURNING * INTO m;
    IF p.once AND NOT t.trial_granted THEN
        UPDATE teams SET trial_granted = true WHERE id = p_team;
    END IF;
    RETURN m;
END
$$;

-- Minor units per major unit of a currency, as Stripe counts amounts: 1 for
-- Stripe's zero-decimal currencies (https://docs.stripe.com/currencies#zero-decimal),
-- 100 for the others. (Stripe's three-decimal currencies, e.g. BHD, are not
-- supported by this catalog's prices.)
CREATE FUNCTION tokens_minor_units(p_currency text)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN CASE WHEN lower(p_currency) IN (
    'bif', 'clp', 'djf', 'gnf', 'jpy', 'kmf', 'krw', 'mga', 'pyg', 'rwf', 'ugx', 'vnd',
    'vuv', 'xaf', 'xof', 'xpf') THEN 1 ELSE 100 END;
