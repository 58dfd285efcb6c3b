-- Usage alerts (README "Usage alerts"), made in the transaction of the charge that
-- crossed the level, whichever function made the change (tokens_hold,
-- tokens_settle, tokens_apply's group commit): a row trigger on the month's
-- running totals, so the money functions need not know about alerts.
--
-- Re-applied by `tokens migrate` whenever this file changes (after the
-- versioned migrations, in the same transaction); the table is in
-- db/migrations/0005_alerts.sql.
--
-- Usage of a kind = held + spent: a hold counts against what is available at
-- once, so it is what brings a team to the point where charges are refused.
--   free:       free_held + free_spent             against free_granted
--   additional: additional_held + additional_spent against the team's limit
--               (0 when its plan allows no additional tokens: no alert)
-- An alert is made when a change raises a kind's usage to or above a level
-- (80 or 100 % of a positive grant or limit) and the (team, month, kind,
-- level) has none yet. Exactly once: the month row is locked by the UPDATE
-- that fires this, so two transactions never decide at once for one month,
-- and the unique key (ON CONFLICT DO NOTHING) settles any other case. A rolled
-- back charge takes its alert with it. A grant raised mid-month (seats added)
-- can be crossed again, but only levels not yet alerted make a new alert. A
-- new billing month is a new key: it alerts again.

DROP TRIGGER IF EXISTS billing_months_usage_alerts ON billing_months;
DROP FUNCTION IF EXISTS tokens_usage_alerts() CASCADE;
DROP FUNCTION IF EXISTS tokens_alert(text, timestamptz, text, bigint, bigint) CASCADE;

-- The alerts of one kind that `used` of `base` calls for, made once each.
CREATE FUNCTION tokens_alert(
    p_team text, p_start timestamptz, p_kind text, p_used bigint, p_base bigint
)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO alerts (team_id, period_start, kind, level, spent, granted_or_limit)
    SELECT p_team, p_start, p_kind, l.level, p_used, p_base
      FROM (VALUES (80), (100)) AS l(level)
     WHERE p_base > 0
       AND p_used * 100 >= l.level::bigint * p_base
       -- Checked first so that a level already alerted costs one index probe,
       -- not a tuple built with a new id and uuid only to be thrown away.
       AND NOT EXISTS (SELECT 1 FROM alerts a
                        WHERE a.team_id = p_team AND a.period_start = p_start
                          AND a.kind = p_kind AND a.level = l.level)
    ON CONFLICT ON CONSTRAINT alerts_once DO NOTHING
$$;

CREATE FUNCTION tokens_usage_alerts()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    used bigint;
    lim bigint;
BEGIN
    -- Below 80 % nothing can be due: tokens_alert is not even called.
    used := NEW.free_held + NEW.free_spent;
    IF used > OLD.free_held + OLD.free_spent AND used * 100 >= 80 * NEW.free_granted THEN
        PERFORM tokens_alert(NEW.team_id, NEW.period_start, 'free', used, NEW.free_granted);
    END IF;
    used := NEW.additional_held + NEW.additional_spent;
    IF used > OLD.additional_held + OLD.additional_spent THEN
        SELECT tokens_month_limit(t, p, NEW.period_start) INTO lim
          FROM teams t JOIN plans p ON p.name = t.plan
         WHERE t.id = NEW.team_id;
        IF used * 100 >= 80 * lim THEN
            PERFORM tokens_alert(NEW.team_id, NEW.period_start, 'additional', used, lim);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- The WHEN clause keeps the hot path cheap: a capture (held -> spent) or a
-- release changes no usage upwards, and a free hold below 80 % of the grant
-- cannot alert, so neither calls the function. 80 is the lowest level above.
CREATE TRIGGER billing_months_usage_alerts
    AFTER UPDATE OF free_held, free_spent, additional_held, additional_spent ON billing_months
    FOR EACH ROW
    WHEN (
        (NEW.free_held + NEW.free_spent > OLD.free_held + OLD.free_spent
         AND (NEW.free_held + NEW.free_spent) * 100 >= 80 * NEW.free_granted)
        OR NEW.additional_held + NEW.additional_spent
           > OLD.additional_held + OLD.additional_spent
    )
    EXECUTE FUNCTION tokens_usage_alerts();
