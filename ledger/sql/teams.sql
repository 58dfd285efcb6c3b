-- Teams: plan, seats, anchor and customer changes, and what they do to the current month.
--
-- Re-applied by `tokens migrate` whenever this file changes (after the
-- versioned migrations, in the same transaction; db/migrate.py lists the files
-- in the order they are applied).

DROP FUNCTION IF EXISTS tokens_set_team(text, text, integer, text, timestamptz, text, timestamptz)
    CASCADE;

-- Create or update a team (README "How the ledger works"). A month's grant only grows: a
-- plan or seat change raises the current month's grant at once to what the
-- new plan x seats gives, never lowers it. A new anchor (a trial converting,
-- a new subscription) cuts the running month short where it takes effect (at
-- the anchor, or at the change when the anchor is already past), so the next
-- month starts there; unspent free tokens end there.
--
-- A team whose subscription ended stays ended through a team set of the same
-- term (same anchor: the app re-sending its team, a seat change): months from
-- the end grant nothing and allow no additional tokens, whatever the plan and
-- seats say. A new anchor is a new term and makes the team current again; it
-- also leaves the ended subscription, whose late events then change nothing
-- (README "Stripe webhooks").
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
    cut timestamptz;
    new_term boolean;
BEGIN
    -- NO KEY: the lock order in holds.sql.
    SELECT * INTO old FROM teams WHERE id = p_team FOR NO KEY UPDATE;
    created := NOT FOUND;
    IF created THEN
        INSERT INTO teams (id, plan, seats, billing_interval, anchor, stripe_customer,
                           created_at, updated_at)
        VALUES (p_team, p_plan, p_seats, p_interval, p_anchor, p_customer, p_at, p_at)
        RETURNING * INTO team;
        RETURN;
    END IF;

    new_term := p_anchor <> old.anchor;
    IF new_term THEN
        -- A new anchor takes effect at itself, or at the change when it is already
        -- past (a trial converted days ago and Stripe delivered the webhook late, an
        -- app that set the team up a few seconds after Stripe's anchor): the running
        -- month ends then, what was charged until then stays in the month whose
        -- grant paid for it, and the months after follow the new anchor. Only a
        -- month already opened from that point on (by a clock set ahead) conflicts.
        cut := greatest(p_anchor, p_at);
        IF EXISTS (SELECT 1 FROM billing_months b
                    WHERE b.team_id = p_team AND b.period_start >= cut) THEN
            PERFORM tokens_raise('TK005', jsonb_build_object(
                'team', p_team, 'anchor', p_anchor, 'from', cut));
        END IF;
        UPDATE billing_months b SET period_end = cut
         WHERE b.team_id = p_team AND b.period_start < cut AND b.period_end > cut;
    END IF;

    UPDATE teams
       SET plan = p_plan, seats = p_seats, billing_interval = p_interval, anchor = p_anchor,
           stripe_customer = coalesce(p_customer, old.stripe_customer), updated_at = p_at,
           subscription_ended_at = CASE WHEN new_term THEN NULL ELSE old.subscription_ended_at END,
           stripe_subscription = CASE WHEN new_term AND old.subscription_ended_at IS NOT NULL
                                      THEN NULL ELSE old.stripe_subscription END
     WHERE id = p_team
    RETURNING * INTO team;

    SELECT * INTO m FROM billing_months b
     WHERE b.team_id = p_team AND b.period_start <= p_at AND b.period_end > p_at
     FOR NO KEY UPDATE;
    IF FOUND AND NOT coalesce(m.period_start >= team.subscription_ended_at, false) THEN
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
