-- Every statement the ledger sends, by name. Parsed once by db/queries.py.
-- The state changes themselves are the functions in holds.sql, periods.sql, teams.sql.

-- upsert_plan --
INSERT INTO plans (name, free_tokens, per_seat, once, additional_allowed, unit_price,
                   threshold_cents, currency)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (name) DO UPDATE
SET free_tokens = EXCLUDED.free_tokens, per_seat = EXCLUDED.per_seat, once = EXCLUDED.once,
    additional_allowed = EXCLUDED.additional_allowed, unit_price = EXCLUDED.unit_price,
    threshold_cents = EXCLUDED.threshold_cents, currency = EXCLUDED.currency
WHERE (plans.free_tokens, plans.per_seat, plans.once, plans.additional_allowed,
       plans.unit_price, plans.threshold_cents, plans.currency)
   IS DISTINCT FROM
      (EXCLUDED.free_tokens, EXCLUDED.per_seat, EXCLUDED.once, EXCLUDED.additional_allowed,
       EXCLUDED.unit_price, EXCLUDED.threshold_cents, EXCLUDED.currency)

-- set_team --
SELECT (r.team).*, r.created FROM tokens_set_team($1, $2, $3, $4, $5, $6, $7) r

-- get_team --
SELECT * FROM teams WHERE id = $1

-- lock_team --
-- NO KEY: the lock order in ledger/sql/holds.sql.
SELECT * FROM teams WHERE id = $1 FOR NO KEY UPDATE

-- set_limit --
UPDATE teams SET additional_limit = $2, updated_at = $3 WHERE id = $1

-- record_limit_change --
INSERT INTO limit_changes (team_id, actor, role, old_limit, new_limit, changed_at)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *

-- limit_changes --
SELECT * FROM limit_changes WHERE team_id = $1 ORDER BY id

-- expire_holds --
SELECT * FROM tokens_expire_holds($1, $2, $3)

-- stale_holds --
SELECT id, team_id, idempotency_key, job_id FROM charges
 WHERE state = 'held' AND held_at < $1 AND job_id IS NOT NULL
 ORDER BY id

-- open_month --
SELECT * FROM tokens_open_month($1, $2)

-- billing_section --
SELECT t.id AS team, t.plan, t.seats, t.billing_interval, t.stripe_customer,
       t.additional_limit,
       tokens_month_limit(t, p, m.period_start) AS effective_limit,
       m.unit_price, m.currency,
       m.period_start, m.period_end, m.free_granted, m.free_held, m.free_spent,
       m.additional_held, m.additional_spent, m.additional_billed
FROM tokens_open_month($1, $2) m
JOIN teams t ON t.id = m.team_id
JOIN plans p ON p.name = t.plan

-- month_charges --
SELECT * FROM charges
WHERE team_id = $1 AND period_start = $2
ORDER BY id DESC
LIMIT $3

-- history --
SELECT c.*, b.period_end
FROM charges c
JOIN billing_months b ON b.team_id = c.team_id AND b.period_start = c.period_start
WHERE c.team_id = $1
ORDER BY c.id

-- list_teams --
-- Every team with the billing month containing $1 (opened as a read of that month
-- would open it).
SELECT t.*, m.period_start, m.period_end
FROM teams t
CROSS JOIN LATERAL tokens_open_month(t.id, $1) m
ORDER BY t.id

-- team_months --
-- A team's billing months that hold charges, or contain $2 (the current one), newest first.
SELECT period_start, period_end FROM billing_months b
WHERE team_id = $1
  AND (period_start <= $2 AND period_end > $2
       OR EXISTS (SELECT 1 FROM charges c
                   WHERE c.team_id = b.team_id AND c.period_start = b.period_start))
ORDER BY period_start DESC

-- get_charge --
SELECT * FROM charges WHERE id = $1

-- charge_by_key --
SELECT * FROM charges WHERE team_id = $1 AND idempotency_key = $2

-- history_page --
-- A team's charges, newest first, older than charge $2 when it is given (cursor paging).
-- Only the billing month starting at $4, when it is given.
SELECT * FROM charges
WHERE team_id = $1 AND ($2::bigint IS NULL OR id < $2)
  AND ($4::timestamptz IS NULL OR period_start = $4)
ORDER BY id DESC
LIMIT $3

-- ledger_drift --
-- Running totals that differ from the sum of their month's charges: must be empty.
SELECT b.team_id, b.period_start,
       b.free_held, b.free_spent, b.additional_held, b.additional_spent,
       coalesce(s.free_held, 0) AS sum_free_held, coalesce(s.free_spent, 0) AS sum_free_spent,
       coalesce(s.additional_held, 0) AS sum_additional_held,
       coalesce(s.additional_spent, 0) AS sum_additional_spent
FROM billing_months b
LEFT JOIN (
    SELECT team_id, period_start,
           sum(free_tokens) FILTER (WHERE state = 'held') AS free_held,
           sum(free_tokens) FILTER (WHERE state = 'captured') AS free_spent,
           sum(additional_tokens) FILTER (WHERE state = 'held') AS additional_held,
           sum(additional_tokens) FILTER (WHERE state = 'captured') AS additional_spent
    FROM charges GROUP BY team_id, period_start
) s USING (team_id, period_start)
WHERE (b.free_held, b.free_spent, b.additional_held, b.additional_spent)
      IS DISTINCT FROM
      (coalesce(s.free_held, 0), coalesce(s.free_spent, 0),
       coalesce(s.additional_held, 0), coalesce(s.additional_spent, 0))

-- apply --
SELECT * FROM tokens_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)

-- member_cap --
SELECT cap FROM member_caps WHERE team_id = $1 AND member = $2

-- set_member_cap --
INSERT INTO member_caps (team_id, member, cap, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (team_id, member) DO UPDATE SET cap = EXCLUDED.cap, updated_at = EXCLUDED.updated_at

-- remove_member_cap --
-- The member's running totals go with the cap: a cap set again later rebuilds
-- them from the member's charges, which tokens_apply kept up to date meanwhile.
WITH gone AS (DELETE FROM member_months WHERE team_id = $1 AND member = $2)
DELETE FROM member_caps WHERE team_id = $1 AND member = $2

-- record_member_cap_change --
INSERT INTO member_cap_changes (team_id, member, actor, role, old_cap, new_cap, changed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *

-- member_spend --
-- Each capped member's use of billing month $2: their running totals, or, before
-- any hold of theirs under the cap this month, the sum of their charges (a sum of
-- bigint is numeric: cast back, or the totals would read as Decimal).
SELECT mc.member, mc.cap,
       coalesce(mm.held, s.held::bigint, 0) AS held,
       coalesce(mm.spent, s.spent::bigint, 0) AS spent
FROM member_caps mc
LEFT JOIN member_months mm
       ON mm.team_id = mc.team_id AND mm.period_start = $2 AND mm.member = mc.member
LEFT JOIN LATERAL (
    SELECT sum(c.tokens) FILTER (WHERE c.state = 'held') AS held,
           sum(c.tokens) FILTER (WHERE c.state = 'captured') AS spent
    FROM charges c
    WHERE c.team_id = mc.team_id AND c.period_start = $2 AND c.member = mc.member
      AND mm.member IS NULL
) s ON true
WHERE mc.team_id = $1
ORDER BY mc.member

-- member_drift --
-- Capped members' running totals that differ from their charges: must be empty.
SELECT mm.team_id, mm.period_start, mm.member, mm.held, mm.spent,
       coalesce(s.held, 0) AS sum_held, coalesce(s.spent, 0) AS sum_spent
FROM member_months mm
LEFT JOIN LATERAL (
    SELECT sum(c.tokens) FILTER (WHERE c.state = 'held') AS held,
           sum(c.tokens) FILTER (WHERE c.state = 'captured') AS spent
    FROM charges c
    WHERE c.team_id = mm.team_id AND c.period_start = mm.period_start AND c.member = mm.member
) s ON true
WHERE (mm.held, mm.spent) IS DISTINCT FROM (coalesce(s.held, 0), coalesce(s.spent, 0))
