-- The money path, in the database where the balances are.
--
-- The rule of a hold, first (the three functions below): a hold takes the
-- team's free tokens first, then additional tokens up to what the team's
-- monthly limit leaves; when the two together are short, or when it would
-- take its member over their monthly cap, it is refused whole and nothing is
-- taken. Everything that holds or settles (group commit, a
-- lone call, Ledger.charge, the expiry sweep, the tokens_hold / tokens_settle
-- wrappers) goes through one function, tokens_apply, which applies this rule
-- on the locked billing-month rows.
--
-- Python never does arithmetic on a balance it read earlier: every change is
-- one statement on a locked billing-month row, and the table CHECKs make a
-- wrong balance impossible.
--
-- Lock order, everywhere: charges being settled -> teams -> billing_months
-- (several months: by team, then period) -> charges (new rows).
-- Settling locks the charge first, then its month; it never needs a team lock.
-- One team lock comes after the month's, and cannot be avoided: a transaction
-- that writes a month row a second time (a batch's settlements, then its
-- holds; Ledger.charge's hold, then its capture) makes Postgres check the
-- row's foreign key, which takes FOR KEY SHARE on the team. Every team lock is
-- therefore FOR NO KEY UPDATE (nothing changes a team's id), which that check
-- never waits for: a FOR UPDATE held by a call queued for the month closed a
-- cycle (tests/test_lock_order.py).
--
-- Re-applied by `tokens migrate` whenever this file changes (db/migrate.py).
-- Errors raised on purpose: ledger/sql/errors.sql (TK0xx, DETAIL = the ids as JSON).

DROP FUNCTION IF EXISTS tokens_hold_fits(bigint, bigint, bigint) CASCADE;
DROP FUNCTION IF EXISTS tokens_member_allows(bigint, bigint) CASCADE;
DROP FUNCTION IF EXISTS tokens_hold_free_part(bigint, bigint) CASCADE;
DROP FUNCTION IF EXISTS tokens_free_left(billing_months) CASCADE;
DROP FUNCTION IF EXISTS tokens_additional_left(billing_months, bigint) CASCADE;
DROP FUNCTION IF EXISTS tokens_charge_by_key(text, text) CASCADE;
DROP FUNCTION IF EXISTS tokens_apply(bigint[], text[], timestamptz[], text[], text[], text[],
                                     integer[], bigint[], timestamptz[], text[], text[]) CASCADE;
DROP FUNCTION IF EXISTS tokens_apply(bigint[], text[], timestamptz[], text[], text[], text[],
                                     integer[], bigint[], timestamptz[], text[], text[], text[])
    CASCADE;
DROP FUNCTION IF EXISTS tokens_hold(text, text, text, integer, bigint, timestamptz, text, text)
    CASCADE;
DROP FUNCTION IF EXISTS tokens_settle(bigint, text, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_expire_holds(timestamptz, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_expire_holds(timestamptz, timestamptz, text[]) CASCADE;

-- A hold fits when the month's free and additional room together cover it;
-- otherwise it is refused whole.
CREATE FUNCTION tokens_hold_fits(p_tokens bigint, p_free_left bigint, p_additional_left bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN p_tokens <= p_free_left + p_additional_left;

-- A member with a cap may hold only what the cap leaves them this month
-- (p_member_left NULL: no cap).
CREATE FUNCTION tokens_member_allows(p_tokens bigint, p_member_left bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN p_member_left IS NULL OR p_tokens <= p_member_left;

-- A hold that fits takes free tokens first; the rest of it is additional.
CREATE FUNCTION tokens_hold_free_part(p_tokens bigint, p_free_left bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(p_tokens, p_free_left);

-- A month's free room: granted, neither held nor spent.
CREATE FUNCTION tokens_free_left(m billing_months)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN m.free_granted - m.free_held - m.free_spent;

-- A month's additional room under the limit in force; never below 0 (a limit
-- lowered below what was already spent leaves nothing, it does not go negative).
CREATE FUNCTION tokens_additional_left(m billing_months, p_limit bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN greatest(p_limit - m.additional_held - m.additional_spent, 0);

-- The charge of (team, idempotency key); all NULL when there is none.
-- EXECUTE plans the lookup afresh on every call: a plan cached by a pooled
-- connection while `charges` was small and not yet analyzed can pick the
-- team-only index over the unique (team, key) one, and then scan all of a hot
-- team's charges on every hold for as long as the connection lives.
CREATE FUNCTION tokens_charge_by_key(p_team text, p_key text)
RETURNS charges
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c charges;
BEGIN
    EXECUTE 'SELECT * FROM charges WHERE team_id = $1 AND idempotency_key = $2'
       INTO c USING p_team, p_key;
    RETURN c;
END
$$;

-- tokens_apply: the holds and settlements of one transaction.
--
-- Called with a batch (ledger/group_commit.py gathers what one process asked
-- while its previous batch was committing) or with one item. Settlements go
-- first, then the holds team by team, in array order within a team: a
-- settlement never takes tokens, so settling first only gives a hold more room.
-- A (team, key) and a charge come at most once per call (group commit keeps a
-- repeat for the next batch).
--
-- Holds: tokens_member_allows, tokens_hold_fits and tokens_hold_free_part on the
-- running room of the hold's month (and of its member's, under a cap); a
-- refused hold says why (`refusal`: 'member_cap' or 'not_enough_tokens').
-- Idempotent by (team, key): the same key returns the same charge, whatever the
-- clock; other parameters are an error (TK002).
-- Settlements: 'captured' (the search happened: spent) or 'released' /
-- 'expired' (it never happened: the tokens come back), exactly once: the same
-- settlement again returns the charge unchanged, another one is an error
-- (TK004). A charge stays in the billing month its hold was placed in.
--
-- Nothing raises for one item: an unknown team or charge, a reused key or a
-- settled charge becomes that item's err_code / err_message / err_detail and
-- the other items go on.
CREATE FUNCTION tokens_apply(
    settle_charge bigint[], settle_state text[], settle_at timestamptz[],
    hold_team text[], hold_key text[], hold_action text[], hold_quantity integer[],
    hold_tokens bigint[], hold_at timestamptz[], hold_job text[], hold_lead text[],
    hold_member text[]
)
RETURNS TABLE (
    kind text, pos integer, err_code text, err_message text, err_detail jsonb,
    charge_id bigint, team_id text, period_start timestamptz, period_end timestamptz,
    idempotency_key text, action text, quantity integer, tokens bigint,
    free_tokens bigint, additional_tokens bigint, state text, job_id text, lead_id text,
    held_at timestamptz, settled_at timestamptz, replayed boolean, changed boolean,
    free_available bigint, additional_available bigint,
    unbilled_additional bigint, threshold_reached boolean, member text, refusal text
)
LANGUAGE plpgsql
-- The statements below reach every row by its key and walk the items with
-- generate_subscripts, so one generic plan per connection suits every call;
-- left to itself the plan cache re-plans those with array parameters on
-- every call, which costs more than running them.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    settle_count integer := coalesce(array_length(settle_charge, 1), 0);
    hold_count integer := coalesce(array_length(hold_team, 1), 0);
    -- Arrays start NULL: a subscript of NULL reads NULL, and assigning to one makes it.
    -- The charges to settle (still held, with a valid new state), and their months.
    settling bigint[];
    settling_team text[];
    settling_month timestamptz[];
    -- Per hold, by position, filled as they are learnt.
    hold_error text[];           -- its error code, if any
    hold_month timestamptz[] := array_fill(NULL::timestamptz, ARRAY[hold_count]);
    hold_month_end timestamptz[];
    hold_limit bigint[];         -- the team's additional-token limit in that month
    hold_charge bigint[];        -- new, replayed, or the one its reused key belongs to
    hold_replayed boolean[];
    hold_refused boolean[];
    hold_refusal text[];         -- why it was refused
    hold_free bigint[];          -- its free part (the rest is additional)
    free_left_after bigint[];    -- the month's room once it is decided
    additional_left_after bigint[];
    to_insert integer[];         -- the positions of holds that fit
    inserted integer[];          -- those a concurrent transaction did not take first
    -- Each hold's month, numbered, and that month's running room.
    hold_month_no integer[];
    month_no integer;
    month_free_left bigint[];
    month_additional_left bigint[];
    -- Each capped member's month, numbered, and the room its cap leaves.
    hold_member_no integer[];
    member_no integer;
    member_left bigint[];
    capped_members integer := 0;
    -- The rows this call locks.
    locked_team text[];
    locked_month timestamptz[];
    i integer;
    k record;
    teams_cursor refcursor;
    c charges;
    m billing_months;
    this_team text;
    this_start timestamptz;
    this_end timestamptz;
    this_limit bigint;
BEGIN
    -- 1. Lock the charges to settle, in id order (every path locks a charge
    --    before its month). Those still held, with a valid new state, are settled.
    IF settle_count > 0 THEN
        SELECT coalesce(array_agg(l.id) FILTER (WHERE l.go), '{}'),
               coalesce(array_agg(l.team_id) FILTER (WHERE l.go), '{}'),
               coalesce(array_agg(l.period_start) FILTER (WHERE l.go), '{}')
          INTO settling, settling_team, settling_month
          FROM (SELECT ch.id, ch.team_id, ch.period_start,
                       ch.state = 'held' AND settle_state[array_position(settle_charge, ch.id)]
                           IN ('captured', 'released', 'expired') AS go
                  FROM charges ch WHERE ch.id = ANY (settle_charge)
                 ORDER BY ch.id FOR UPDATE) l;
    END IF;

    IF hold_count > 0 THEN
        -- 2a. A known key answers from its charge, without a month lock: a retry
        --     does not queue behind the month. One lookup for the whole call.
        FOR k IN EXECUTE CASE WHEN hold_count = 1 THEN
            'SELECT 1 AS i, ch.id, ch.action, ch.quantity FROM charges ch
              WHERE ch.team_id = $1[1] AND ch.idempotency_key = $2[1]'
        ELSE
            'SELECT u.i::integer AS i, ch.id, ch.action, ch.quantity
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY u(t, k, i)
               JOIN LATERAL (SELECT c.id, c.action, c.quantity FROM charges c
                              WHERE c.team_id = u.t AND c.idempotency_key = u.k
                             OFFSET 0) ch ON true'
        END USING hold_team, hold_key
        LOOP
            hold_charge[k.i] := k.id;
            IF k.action <> hold_action[k.i] OR k.quantity <> hold_quantity[k.i] THEN
                hold_error[k.i] := 'TK002';
            ELSE
                hold_replayed[k.i] := true;
            END IF;
        END LOOP;

        -- 2b. Every other hold's billing month (opened on first use) and the
        --     team's limit in it. One statement reads each team, its plan and the
        --     month of its earliest hold; teams in id order (opening a month locks
        --     the team). A hold outside that month looks its own up.
            OPEN teams_cursor FOR
                SELECT d.items, tp.team, tp.plan, mo.period_start, mo.period_end
                  FROM (SELECT hold_team[j] AS team_id, min(hold_at[j]) AS first_at,
                               array_agg(j::integer) AS items
                          FROM generate_subscripts(hold_team, 1) j GROUP BY 1) d
                  LEFT JOIN LATERAL (SELECT t AS team, p AS plan
                                       FROM teams t JOIN plans p ON p.name = t.plan
                                      WHERE t.id = d.team_id OFFSET 0) tp ON true
                  LEFT JOIN LATERAL (SELECT b.period_start, b.period_end
                                       FROM billing_months b
                                      WHERE b.team_id = d.team_id
                                        AND b.period_start <= d.first_at
                                      ORDER BY b.period_start DESC LIMIT 1) mo ON true
                 ORDER BY d.team_id;
        LOOP
            FETCH teams_cursor INTO k;
            EXIT WHEN NOT FOUND;
            this_team := hold_team[k.items[1]];
            this_start := k.period_start;
            this_end := k.period_end;
            this_limit := NULL;
            FOREACH i IN ARRAY k.items LOOP
                IF k.team IS NULL THEN
                    hold_error[i] := 'TK001';  -- unknown team
                    CONTINUE;
                END IF;
                CONTINUE WHEN hold_charge[i] IS NOT NULL;
                IF this_start IS NULL OR hold_at[i] < this_start OR hold_at[i] >= this_end THEN
                    SELECT * INTO m FROM billing_months b
                     WHERE b.team_id = this_team AND b.period_start <= hold_at[i]
                     ORDER BY b.period_start DESC LIMIT 1;
                    IF NOT FOUND OR m.period_end <= hold_at[i] THEN
                        m := tokens_open_month(this_team, hold_at[i]);
                    END IF;
                    this_start := m.period_start;
                    this_end := m.period_end;
                    this_limit := NULL;
                END IF;
                IF this_limit IS NULL THEN  -- 0 once the subscription has ended
                    this_limit := tokens_month_limit(k.team, k.plan, this_start);
                END IF;
                hold_month[i] := this_start;
                hold_month_end[i] := this_end;
                hold_limit[i] := this_limit;
            END LOOP;
        END LOOP;
        CLOSE teams_cursor;
    END IF;

    -- 3. Lock every month this call changes, in (team, month) order, so that
    --    batches, the expiry sweep and bill-making never deadlock on them.
    locked_team := settling_team || hold_team;
    locked_month := settling_month || hold_month;
    IF cardinality(locked_team) = 1 THEN
        PERFORM 1 FROM billing_months b
         WHERE b.team_id = locked_team[1] AND b.period_start = locked_month[1]
           FOR NO KEY UPDATE;
    ELSIF cardinality(locked_team) > 1 THEN
        PERFORM 1
           FROM (SELECT DISTINCT locked_team[j] AS t, locked_month[j] AS ms
                   FROM generate_subscripts(locked_team, 1) j
                  WHERE locked_month[j] IS NOT NULL
                  ORDER BY 1, 2) k,
                LATERAL (SELECT 1 FROM billing_months b
                          WHERE b.team_id = k.t AND b.period_start = k.ms
                            FOR NO KEY UPDATE) l;
    END IF;

    -- 4. Settle: each charge takes its new state, and its month moves its tokens
    --    from held to spent (captured) or back to the room (released, expired).
    IF cardinality(settling) = 1 THEN
        UPDATE charges ch
           SET state = settle_state[array_position(settle_charge, ch.id)],
               settled_at = settle_at[array_position(settle_charge, ch.id)]
         WHERE ch.id = settling[1]
        RETURNING * INTO c;
        UPDATE billing_months b
           SET free_held = b.free_held - c.free_tokens,
               additional_held = b.additional_held - c.additional_tokens,
               free_spent = b.free_spent
                   + CASE WHEN c.state = 'captured' THEN c.free_tokens ELSE 0 END,
               additional_spent = b.additional_spent
                   + CASE WHEN c.state = 'captured' THEN c.additional_tokens ELSE 0 END
         WHERE b.team_id = c.team_id AND b.period_start = c.period_start;
        IF c.member IS NOT NULL THEN  -- a capped member's totals, when the row exists
            UPDATE member_months mm
               SET held = mm.held - c.tokens,
                   spent = mm.spent + CASE WHEN c.state = 'captured' THEN c.tokens ELSE 0 END
             WHERE mm.team_id = c.team_id AND mm.period_start = c.period_start
               AND mm.member = c.member;
        END IF;
    ELSIF cardinality(settling) > 1 THEN
        WITH done AS (
            UPDATE charges ch
               SET state = settle_state[array_position(settle_charge, ch.id)],
                   settled_at = settle_at[array_position(settle_charge, ch.id)]
             WHERE ch.id = ANY (settling)
            RETURNING ch.id, ch.team_id, ch.period_start, ch.free_tokens, ch.additional_tokens,
                      ch.state, ch.member, ch.tokens
        ), months AS (
            UPDATE billing_months b
               SET free_held = b.free_held - d.free_held,
                   additional_held = b.additional_held - d.additional_held,
                   free_spent = b.free_spent + d.free_spent,
                   additional_spent = b.additional_spent + d.additional_spent
              FROM (SELECT done.team_id, done.period_start,
                           sum(done.free_tokens) AS free_held,
                           sum(done.additional_tokens) AS additional_held,
                           coalesce(sum(done.free_tokens) FILTER (WHERE done.state = 'captured'),
                                    0) AS free_spent,
                           coalesce(sum(done.additional_tokens)
                                    FILTER (WHERE done.state = 'captured'), 0)
                               AS additional_spent
                      FROM done GROUP BY done.team_id, done.period_start) d
             WHERE b.team_id = d.team_id AND b.period_start = d.period_start
               AND b.team_id = ANY (settling_team)
        )
        SELECT count(*) FILTER (WHERE done.member IS NOT NULL) INTO i FROM done;
        IF i > 0 THEN  -- capped members' totals, where their rows exist
            UPDATE member_months mm
               SET held = mm.held - d.held,
                   spent = mm.spent + d.spent
              FROM (SELECT ch.team_id, ch.period_start, ch.member,
                           sum(ch.tokens) AS held,
                           coalesce(sum(ch.tokens) FILTER (WHERE ch.state = 'captured'), 0)
                               AS spent
                      FROM charges ch
                     WHERE ch.id = ANY (settling) AND ch.member IS NOT NULL
                     GROUP BY 1, 2, 3) d
             WHERE mm.team_id = d.team_id AND mm.period_start = d.period_start
               AND mm.member = d.member;
        END IF;
    END IF;

    -- 5. Answer each settlement (the holds below change no column it reads).
    IF settle_count > 0 THEN
        RETURN QUERY
        SELECT 'settle', u.i::integer, e.code,
               CASE WHEN e.code IS NOT NULL THEN tokens_error_message(e.code, e.detail) END,
               e.detail,
               ch.id, ch.team_id, ch.period_start, mb.period_end, ch.idempotency_key, ch.action,
               ch.quantity, ch.tokens, ch.free_tokens, ch.additional_tokens, ch.state,
               ch.job_id, ch.lead_id, ch.held_at, ch.settled_at, NULL::boolean,
               ch.id = ANY (settling), NULL::bigint, NULL::bigint, mb.unbilled, mb.reached,
               ch.member, NULL::text
          FROM (SELECT j AS i, settle_charge[j] AS id, settle_state[j] AS st
                  FROM generate_subscripts(settle_charge, 1) j) u
          LEFT JOIN LATERAL (SELECT * FROM charges c1 WHERE c1.id = u.id OFFSET 0) ch ON true
          CROSS JOIN LATERAL (
              SELECT x.code,
                     CASE WHEN x.code IS NOT NULL THEN jsonb_build_object(
                         'charge', u.id, 'team', ch.team_id, 'key', ch.idempotency_key,
                         'state', ch.state, 'wanted', u.st) END AS detail
                FROM (SELECT CASE WHEN ch.id IS NULL THEN 'TK003'
                                  WHEN u.st IS NULL
                                       OR u.st NOT IN ('captured', 'released', 'expired')
                                      THEN 'TK006'
                                  WHEN ch.state <> u.st THEN 'TK004' END AS code) x) e
          LEFT JOIN LATERAL (
              SELECT b.period_end, b.additional_spent - b.additional_billed AS unbilled,
                     (b.additional_spent - b.additional_billed) * b.unit_price
                         * tokens_minor_units(b.currency) >= p.threshold_cents AS reached
                FROM billing_months b
                JOIN teams t ON t.id = b.team_id
                JOIN plans p ON p.name = t.plan
               WHERE b.team_id = ch.team_id AND b.period_start = ch.period_start
              OFFSET 0) mb ON true;
    END IF;

    IF hold_count = 0 THEN
        RETURN;
    END IF;

    -- 6. Decide the holds, in array order, each on its month's running room as
    --    the settlements above left it (and its member's, under a cap): the rule
    --    of the functions at the top of this file. Holds that are errors or
    --    replays have no month.
    FOR k IN
        SELECT d.items, r.free_left, r.additional_left
          FROM (SELECT hold_team[j] AS t, hold_month[j] AS ms, array_agg(j::integer) AS items
                  FROM generate_subscripts(hold_team, 1) j
                 WHERE hold_month[j] IS NOT NULL
                 GROUP BY 1, 2) d
          JOIN LATERAL (SELECT tokens_free_left(b) AS free_left,
                               tokens_additional_left(b, hold_limit[d.items[1]])
                                   AS additional_left
                          FROM billing_months b
                         WHERE b.team_id = d.t AND b.period_start = d.ms OFFSET 0) r
            ON true
    LOOP
        month_no := coalesce(month_no, 0) + 1;
        month_free_left[month_no] := k.free_left;
        month_additional_left[month_no] := k.additional_left;
        FOREACH i IN ARRAY k.items LOOP
            hold_month_no[i] := month_no;
        END LOOP;
    END LOOP;
    --    A capped member's room: their month's row of member_months, made from
    --    their charges when the cap first applies in that month (the month lock
    --    is held, so no other transaction changes those charges meanwhile).
    --    Holds of no member skip it.
    IF cardinality(array_remove(hold_member, NULL)) > 0 THEN
        FOR k IN
            SELECT d.items, d.t, d.ms, d.mem, mc.cap
              FROM (SELECT hold_team[j] AS t, hold_month[j] AS ms, hold_member[j] AS mem,
                           array_agg(j::integer) AS items
                      FROM generate_subscripts(hold_member, 1) j
                     WHERE hold_month[j] IS NOT NULL AND hold_member[j] IS NOT NULL
                     GROUP BY 1, 2, 3) d
              JOIN LATERAL (SELECT c1.cap FROM member_caps c1
                             WHERE c1.team_id = d.t AND c1.member = d.mem OFFSET 0) mc ON true
        LOOP
            INSERT INTO member_months (team_id, period_start, member, held, spent)
            SELECT k.t, k.ms, k.mem,
                   coalesce(sum(ch.tokens) FILTER (WHERE ch.state = 'held'), 0),
                   coalesce(sum(ch.tokens) FILTER (WHERE ch.state = 'captured'), 0)
              FROM charges ch
             WHERE ch.team_id = k.t AND ch.period_start = k.ms AND ch.member = k.mem
            ON CONFLICT DO NOTHING;
            member_no := coalesce(member_no, 0) + 1;
            member_left[member_no] := (SELECT greatest(k.cap - mm.held - mm.spent, 0)
                                         FROM member_months mm
                                        WHERE mm.team_id = k.t AND mm.period_start = k.ms
                                          AND mm.member = k.mem);
            FOREACH i IN ARRAY k.items LOOP
                hold_member_no[i] := member_no;
            END LOOP;
            capped_members := member_no;
        END LOOP;
    END IF;

    FOR i IN 1..hold_count LOOP
        month_no := hold_month_no[i];
        CONTINUE WHEN month_no IS NULL;
        member_no := hold_member_no[i];
        hold_replayed[i] := false;
        IF NOT tokens_member_allows(hold_tokens[i], member_left[member_no]) THEN
            hold_refused[i] := true;
            hold_refusal[i] := 'member_cap';
        ELSIF NOT tokens_hold_fits(hold_tokens[i], month_free_left[month_no],
                                   month_additional_left[month_no]) THEN
            hold_refused[i] := true;
            hold_refusal[i] := 'not_enough_tokens';
        ELSE
            hold_free[i] := tokens_hold_free_part(hold_tokens[i], month_free_left[month_no]);
            month_free_left[month_no] := month_free_left[month_no] - hold_free[i];
            month_additional_left[month_no] := month_additional_left[month_no]
                                               - (hold_tokens[i] - hold_free[i]);
            IF member_no IS NOT NULL THEN
                member_left[member_no] := member_left[member_no] - hold_tokens[i];
            END IF;
            to_insert := to_insert || i;
        END IF;
        free_left_after[i] := month_free_left[month_no];
        additional_left_after[i] := month_additional_left[month_no];
    END LOOP;

    -- 7. Insert the holds that fit, and raise each month's held totals once by
    --    what was inserted. A key a concurrent transaction committed since 2a is
    --    not inserted (ON CONFLICT) and answers with that charge (step 8).
    IF cardinality(to_insert) > 0 THEN
        FOR k IN
            INSERT INTO charges (team_id, period_start, idempotency_key, action, quantity,
                                 tokens, free_tokens, additional_tokens, state, job_id,
                                 lead_id, held_at, member)
            SELECT hold_team[j], hold_month[j], hold_key[j], hold_action[j], hold_quantity[j],
                   hold_tokens[j], hold_free[j], hold_tokens[j] - hold_free[j], 'held',
                   hold_job[j], hold_lead[j], hold_at[j], hold_member[j]
              FROM (SELECT to_insert[n] AS j FROM generate_subscripts(to_insert, 1) n) p
            ON CONFLICT (team_id, idempotency_key) DO NOTHING
            RETURNING charges.id, charges.team_id, charges.idempotency_key
        LOOP
            FOREACH i IN ARRAY array_positions(hold_key, k.idempotency_key) LOOP
                IF hold_team[i] = k.team_id THEN
                    hold_charge[i] := k.id;
                    inserted := inserted || i;
                END IF;
            END LOOP;
        END LOOP;
        IF cardinality(inserted) = 1 THEN
            UPDATE billing_months b
               SET free_held = b.free_held + hold_free[inserted[1]],
                   additional_held = b.additional_held
                       + hold_tokens[inserted[1]] - hold_free[inserted[1]]
             WHERE b.team_id = hold_team[inserted[1]]
               AND b.period_start = hold_month[inserted[1]];
        ELSIF cardinality(inserted) > 1 THEN
            UPDATE billing_months b
               SET free_held = b.free_held + d.free_tokens,
                   additional_held = b.additional_held + d.additional_tokens
              FROM (SELECT hold_team[j] AS team_id, hold_month[j] AS period_start,
                           sum(hold_free[j]) AS free_tokens,
                           sum(hold_tokens[j] - hold_free[j]) AS additional_tokens
                      FROM (SELECT inserted[n] AS j FROM generate_subscripts(inserted, 1) n) p
                     GROUP BY 1, 2) d
             WHERE b.team_id = d.team_id AND b.period_start = d.period_start
               AND b.team_id = ANY (hold_team);
        END IF;
        IF capped_members > 0 THEN
            UPDATE member_months mm
               SET held = mm.held + d.tokens
              FROM (SELECT hold_team[j] AS t, hold_month[j] AS ms, hold_member[j] AS mem,
                           sum(hold_tokens[j]) AS tokens
                      FROM (SELECT inserted[n] AS j FROM generate_subscripts(inserted, 1) n) p
                     WHERE hold_member_no[j] IS NOT NULL
                     GROUP BY 1, 2, 3) d
             WHERE mm.team_id = d.t AND mm.period_start = d.ms AND mm.member = d.mem;
        END IF;
    END IF;

    -- 8. A refused hold, or one whose key lost the race, looks for a charge with
    --    its key: a concurrent transaction may have committed it meanwhile.
    FOR i IN 1..hold_count LOOP
        CONTINUE WHEN hold_month[i] IS NULL OR hold_charge[i] IS NOT NULL;
        c := tokens_charge_by_key(hold_team[i], hold_key[i]);
        CONTINUE WHEN c.id IS NULL;  -- refused
        hold_charge[i] := c.id;
        hold_month_end[i] := NULL;  -- its month is the charge's
        hold_refused[i] := false;
        hold_refusal[i] := NULL;
        free_left_after[i] := NULL;
        additional_left_after[i] := NULL;
        IF c.action <> hold_action[i] OR c.quantity <> hold_quantity[i] THEN
            hold_error[i] := 'TK002';
        ELSE
            hold_replayed[i] := true;
        END IF;
    END LOOP;

    -- 9. Answer each hold, read after every change above.
    RETURN QUERY
    SELECT 'hold', u.i::integer, hold_error[u.i],
           CASE WHEN hold_error[u.i] IS NOT NULL
                THEN tokens_error_message(hold_error[u.i], e.detail) END,
           e.detail,
           ch.id, u.t, coalesce(ch.period_start, hold_month[u.i]),
           coalesce(hold_month_end[u.i],
                    (SELECT b.period_end FROM billing_months b
                      WHERE b.team_id = u.t AND b.period_start = ch.period_start)),
           hold_key[u.i], hold_action[u.i], hold_quantity[u.i],
           coalesce(ch.tokens, hold_tokens[u.i]),
           coalesce(ch.free_tokens, 0), coalesce(ch.additional_tokens, 0),
           CASE WHEN hold_refused[u.i] THEN 'refused' ELSE ch.state END,
           ch.job_id, ch.lead_id, ch.held_at, ch.settled_at, hold_replayed[u.i],
           NULL::boolean, free_left_after[u.i], additional_left_after[u.i], NULL::bigint,
           NULL::boolean, coalesce(ch.member, hold_member[u.i]), hold_refusal[u.i]
      FROM (SELECT j AS i, hold_team[j] AS t FROM generate_subscripts(hold_team, 1) j) u
      LEFT JOIN LATERAL (SELECT * FROM charges c1 WHERE c1.id = hold_charge[u.i] OFFSET 0) ch
        ON true
      -- The detail inside a CASE: the planner pulls a lateral subquery filtered
      -- on the error up, and then builds the object for every hold.
      CROSS JOIN LATERAL (
          SELECT CASE WHEN hold_error[u.i] IS NOT NULL THEN jsonb_build_object(
                     'team', u.t, 'key', hold_key[u.i], 'charge', ch.id,
                     'action', hold_action[u.i], 'quantity', hold_quantity[u.i],
                     'used_action', ch.action, 'used_quantity', ch.quantity) END AS detail) e;
END
$$;

-- One hold, for psql and the tests: tokens_apply with one hold; its error raised.
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
    r record;
BEGIN
    SELECT * INTO r FROM tokens_apply('{}', '{}', '{}', ARRAY[p_team], ARRAY[p_key],
                                      ARRAY[p_action], ARRAY[p_quantity], ARRAY[p_tokens],
                                      ARRAY[p_at], ARRAY[p_job], ARRAY[p_lead],
                                      ARRAY[NULL::text]);
    IF r.err_code IS NOT NULL THEN
        PERFORM tokens_raise(r.err_code, r.err_detail);
    END IF;
    charge_id := r.charge_id; state := r.state; replayed := r.replayed; tokens := r.tokens;
    free_tokens := r.free_tokens; additional_tokens := r.additional_tokens;
    period_start := r.period_start; period_end := r.period_end; held_at := r.held_at;
    free_available := r.free_available; additional_available := r.additional_available;
END
$$;

-- One settlement, for psql and the tests: tokens_apply with one settlement; its
-- error raised.
CREATE FUNCTION tokens_settle(
    p_charge bigint, p_state text, p_at timestamptz,
    OUT charge charges, OUT changed boolean,
    OUT unbilled_additional bigint, OUT threshold_reached boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM tokens_apply(ARRAY[p_charge], ARRAY[p_state], ARRAY[p_at],
                                      '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
    IF r.err_code IS NOT NULL THEN
        PERFORM tokens_raise(r.err_code, r.err_detail);
    END IF;
    SELECT * INTO charge FROM charges c WHERE c.id = p_charge;
    changed := r.changed;
    unbilled_additional := r.unbilled_additional;
    threshold_reached := r.threshold_reached;
END
$$;

-- Expire holds placed before p_older_than and still held: their worker is
-- presumed dead (the TTL exceeds any job's timeout), unless their job is one of
-- p_keep (still queued or running: it will capture or release them itself).
-- One sweep at a time; holds being settled right now are skipped, not waited
-- for. Settled by tokens_apply, like any other settlement.
CREATE FUNCTION tokens_expire_holds(
    p_older_than timestamptz, p_at timestamptz, p_keep text[] DEFAULT '{}'
)
RETURNS SETOF charges
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tokens_expire_holds'));
    SELECT coalesce(array_agg(l.id), '{}') INTO ids
      FROM (SELECT ch.id FROM charges ch
             WHERE ch.state = 'held' AND ch.held_at < p_older_than
               AND (ch.job_id IS NULL OR ch.job_id <> ALL (p_keep))
             ORDER BY ch.id
             FOR UPDATE SKIP LOCKED) l;
    n := cardinality(ids);
    IF n = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT a.charge_id, a.team_id, a.period_start, a.idempotency_key, a.action, a.quantity,
           a.tokens, a.free_tokens, a.additional_tokens, a.state, a.job_id, a.lead_id,
           a.held_at, a.settled_at, a.member
      FROM tokens_apply(ids, array_fill('expired'::text, ARRAY[n]), array_fill(p_at, ARRAY[n]),
                        '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}') a
     WHERE a.changed
     ORDER BY a.team_id, a.period_start, a.charge_id;
END
$$;
