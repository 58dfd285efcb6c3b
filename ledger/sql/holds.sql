-- The money path, in the database where the balances are.
--
-- Re-applied by `tokens migrate` whenever this file changes (after the
-- versioned migrations, in the same transaction; db/migrate.py lists the files
-- in the order they are applied: errors, periods, holds, teams). Python never does
-- arithmetic on a balance it read earlier: every change below is one
-- statement on the locked billing-month row, and the table CHECKs make a
-- wrong balance impossible.
--
-- Lock order, everywhere: charges being settled -> teams -> billing_months
-- (several months: by team, then period) -> charges (new rows).
-- Settling locks the charge first, then its month; it never needs a team lock.
--
-- The hold and settle rules live in one function, tokens_apply; everything
-- else that holds or settles (group commit, a lone call, Ledger.charge, the
-- expiry sweep, the tokens_hold / tokens_settle wrappers) calls it.
--
-- Errors raised on purpose: ledger/sql/errors.sql (TK0xx, DETAIL = the ids as JSON).

DROP FUNCTION IF EXISTS tokens_charge_by_key(text, text) CASCADE;
DROP FUNCTION IF EXISTS tokens_apply(bigint[], text[], timestamptz[], text[], text[], text[],
                                     integer[], bigint[], timestamptz[], text[], text[]) CASCADE;
DROP FUNCTION IF EXISTS tokens_hold(text, text, text, integer, bigint, timestamptz, text, text)
    CASCADE;
DROP FUNCTION IF EXISTS tokens_settle(bigint, text, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_expire_holds(timestamptz, timestamptz) CASCADE;
DROP FUNCTION IF EXISTS tokens_expire_holds(timestamptz, timestamptz, text[]) CASCADE;

-- The charge of (team, idempotency key); all NULL when there is none.
-- EXECUTE plans the lookup afresh on every call. A plan cached by a pooled
-- connection while `charges` was small and not yet analyzed can pick
-- charges_team_period_idx (team only) over the unique (team, key) index, and
-- then scans all of a hot team's charges on every hold, for as long as the
-- connection lives. Measured: 32 holds went from 5 ms to 175 ms in 6,400 charges.
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

-- The money rules, in one place: the holds and settlements of one transaction.
-- Every route goes through here: the holds and settlements one process
-- gathered while its previous batch was committing (ledger/group_commit.py),
-- a lone call (a one-element batch), `Ledger.charge` (a hold, then its
-- capture, in one transaction), the expiry sweep and the single-item
-- wrappers below. Items are applied in this order: the settlements, then the
-- holds team by team, in array order within a team. A settlement never takes
-- tokens, so settling first only ever gives a hold more room. The caller
-- sends a charge and a (team, key) at most once per call (group commit keeps
-- a repeat for the next batch).
--
-- Holds: free tokens first, then additional up to the team's limit; refused
-- whole when short. Idempotent by (team, key): the same key returns the same
-- charge, whatever the clock; other parameters are an error (TK002).
-- Settlements: 'captured' (the search happened: spent) or 'released' /
-- 'expired' (it never happened: tokens come back), exactly once: repeating
-- the same settlement returns the charge unchanged, the other one is an error
-- (TK004). The charge stays in the billing month its hold was placed in.
--
-- Nothing here raises for one item: an unknown team or charge, a reused key
-- or a settled charge becomes that item's err_code, err_message and
-- err_detail (see tokens_error_message) and the other items go on. Month rows
-- are locked in (team, month) order, so concurrent batches, the expiry sweep
-- and bill-making never deadlock on them, and each is updated once per
-- statement.
CREATE FUNCTION tokens_apply(
    s_charge bigint[], s_state text[], s_at timestamptz[],
    h_team text[], h_key text[], h_action text[], h_quantity integer[], h_tokens bigint[],
    h_at timestamptz[], h_job text[], h_lead text[]
)
RETURNS TABLE (
    kind text, pos integer, err_code text, err_message text, err_detail jsonb,
    charge_id bigint, team_id text, period_start timestamptz, period_end timestamptz,
    idempotency_key text, action text, quantity integer, tokens bigint,
    free_tokens bigint, additional_tokens bigint, state text, job_id text, lead_id text,
    held_at timestamptz, settled_at timestamptz, replayed boolean, changed boolean,
    free_available bigint, additional_available bigint,
    unbilled_additional bigint, threshold_reached boolean
)
LANGUAGE plpgsql
-- Every statement below is written to be planned once per connection (rows reached
-- by key, items walked by generate_subscripts: see step 3), but the plan cache
-- still made a custom plan on every call for those whose parameters are arrays
-- (`= ANY (...)`, array_position): it costs their estimate of a one-element
-- array against the generic one and keeps replanning. For a lone call (a batch
-- of one) that planning was about a fifth of its Postgres CPU. The generic plan
-- is the plan these statements were written for. EXECUTE (the key lookups,
-- tokens_charge_by_key) still plans afresh: a one-shot plan is always custom.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    ns integer := coalesce(array_length(s_charge, 1), 0);
    nh integer := coalesce(array_length(h_team, 1), 0);
    -- The arrays below start NULL (no initialiser to evaluate on every call): a
    -- subscript of NULL reads NULL, and assigning to one or appending to it makes
    -- the array.
    settled bigint[];
    s_team text[];
    s_month timestamptz[];
    -- Per hold, by position: its error, its month (NULL: none, not to be held),
    -- its charge (new, replayed, or the one its reused key belongs to), whether
    -- it was refused, its split, its team's limit and the room left after it.
    -- Filled as they are learnt (a position never set reads NULL), except
    -- h_month, walked with h_team.
    h_code text[];
    h_month timestamptz[] := array_fill(NULL::timestamptz, ARRAY[nh]);
    h_end timestamptz[];
    h_charge bigint[];
    h_replayed boolean[];
    h_refused boolean[];
    h_free bigint[];
    h_lim bigint[];
    h_free_av bigint[];
    h_add_av bigint[];
    new_pos integer[];
    inserted integer[];
    l_team text[];
    l_month timestamptz[];
    i integer;
    k record;
    teams_of refcursor;  -- step 2's teams
    c charges;
    m billing_months;
    cur_team text;
    cur_start timestamptz;
    cur_end timestamptz;
    cur_lim bigint;
    -- Step 6's months, numbered g: each hold's month, and its running room.
    g integer;
    h_group integer[];
    g_free_av bigint[];
    g_add_av bigint[];
BEGIN
    -- 1. The charges to settle, locked in id order (every path locks a charge before
    --    its month); those still held, with a valid new state, will be settled.
    --    Statements on charges here reach rows by id only (the primary key), so a plan
    --    cached while the table was small cannot wander onto another index later.
    IF ns > 0 THEN
        SELECT coalesce(array_agg(l.id) FILTER (WHERE l.go), '{}'),
               coalesce(array_agg(l.team_id) FILTER (WHERE l.go), '{}'),
               coalesce(array_agg(l.period_start) FILTER (WHERE l.go), '{}')
          INTO settled, s_team, s_month
          FROM (SELECT ch.id, ch.team_id, ch.period_start,
                       ch.state = 'held' AND s_state[array_position(s_charge, ch.id)]
                           IN ('captured', 'released', 'expired') AS go
                  FROM charges ch WHERE ch.id = ANY (s_charge)
                 ORDER BY ch.id FOR UPDATE) l;
    END IF;

    -- 2. A known key answers from its charge, without a month: a retry does not
    --    queue on the month lock. One lookup for the whole call, planned afresh
    --    (see tokens_charge_by_key).
    IF nh > 0 THEN
        FOR k IN EXECUTE CASE WHEN nh = 1 THEN
            'SELECT 1 AS i, ch.id, ch.action, ch.quantity FROM charges ch
              WHERE ch.team_id = $1[1] AND ch.idempotency_key = $2[1]'
        ELSE
            'SELECT u.i::integer AS i, ch.id, ch.action, ch.quantity
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY u(t, k, i)
               JOIN LATERAL (SELECT c.id, c.action, c.quantity FROM charges c
                              WHERE c.team_id = u.t AND c.idempotency_key = u.k
                             OFFSET 0) ch ON true'
        END USING h_team, h_key
        LOOP
            h_charge[k.i] := k.id;
            IF k.action <> h_action[k.i] OR k.quantity <> h_quantity[k.i] THEN
                h_code[k.i] := 'TK002';
            ELSE
                h_replayed[k.i] := true;
            END IF;
        END LOOP;

        --    Every other hold's billing month, opened on first use, and its team's
        --    additional-token limit: one statement reads each team, its plan and the
        --    month of its earliest hold (a statement per team cost more to start than
        --    its lookups); teams visited in id order (tokens_open_month locks the team).
        --    A hold outside that month (a month's end within the call) or without
        --    one looks its own up, and opens it if need be. A hold's month and limit
        --    depend on no other hold, so a team's holds are taken in any order here
        --    (an ordered aggregate costs a sort per call); step 6 decides them in
        --    array order.
        --    A lone hold (most calls) skips the grouping: the same lookups, for it.
        IF nh = 1 THEN
            OPEN teams_of FOR
                SELECT '{1}'::integer[] AS items, tp.team, tp.plan, mo.period_start,
                       mo.period_end
                  FROM (SELECT 1) one
                  LEFT JOIN (SELECT t AS team, p AS plan
                               FROM teams t JOIN plans p ON p.name = t.plan
                              WHERE t.id = h_team[1]) tp ON true
                  LEFT JOIN (SELECT b.period_start, b.period_end FROM billing_months b
                              WHERE b.team_id = h_team[1] AND b.period_start <= h_at[1]
                              ORDER BY b.period_start DESC LIMIT 1) mo ON true;
        ELSE
            OPEN teams_of FOR
                SELECT d.items, tp.team, tp.plan, mo.period_start, mo.period_end
                  FROM (SELECT h_team[j] AS team_id, min(h_at[j]) AS first_at,
                               array_agg(j::integer) AS items
                          FROM generate_subscripts(h_team, 1) j GROUP BY 1) d
                  LEFT JOIN LATERAL (SELECT t AS team, p AS plan
                                       FROM teams t JOIN plans p ON p.name = t.plan
                                      WHERE t.id = d.team_id OFFSET 0) tp ON true
                  LEFT JOIN LATERAL (SELECT b.period_start, b.period_end
                                       FROM billing_months b
                                      WHERE b.team_id = d.team_id
                                        AND b.period_start <= d.first_at
                                      ORDER BY b.period_start DESC LIMIT 1) mo ON true
                 ORDER BY d.team_id;
        END IF;
        LOOP
            FETCH teams_of INTO k;
            EXIT WHEN NOT FOUND;
            cur_team := h_team[k.items[1]];
            cur_start := k.period_start;
            cur_end := k.period_end;
            cur_lim := NULL;
            FOREACH i IN ARRAY k.items LOOP
                IF k.team IS NULL THEN
                    h_code[i] := 'TK001';
                    CONTINUE;
                END IF;
                CONTINUE WHEN h_charge[i] IS NOT NULL;
                IF cur_start IS NULL OR h_at[i] < cur_start OR h_at[i] >= cur_end THEN
                    -- The month is there already, mostly (tokens_open_month's first look).
                    SELECT * INTO m FROM billing_months b
                     WHERE b.team_id = cur_team AND b.period_start <= h_at[i]
                     ORDER BY b.period_start DESC LIMIT 1;
                    IF NOT FOUND OR m.period_end <= h_at[i] THEN
                        m := tokens_open_month(cur_team, h_at[i]);
                    END IF;
                    cur_start := m.period_start;
                    cur_end := m.period_end;
                    cur_lim := NULL;
                END IF;
                -- The month's limit: 0 once the subscription has ended (tokens_month_limit).
                IF cur_lim IS NULL THEN
                    cur_lim := tokens_month_limit(k.team, k.plan, cur_start);
                END IF;
                h_month[i] := cur_start;
                h_end[i] := cur_end;
                h_lim[i] := cur_lim;
            END LOOP;
        END LOOP;
        CLOSE teams_of;
    END IF;

    -- 3. Every month this call changes, locked in (team, month) order.
    --
    --    Here and below, a month (or charge, team) row is reached by its key, one
    --    lookup per item: joined to a whole table instead, a plan made while the
    --    table was small, or for the rows a generic plan guesses an array has,
    --    scans all of it on every call. And the items are walked by
    --    generate_subscripts, not unnest: Postgres estimates unnest from the
    --    array itself, so the plan for a one-item call looks cheaper than the
    --    cached one, and each call would be planned anew (costlier than running
    --    it); generate_subscripts gives one estimate whatever the array, and the
    --    plan is made once per connection.
    l_team := s_team || h_team;
    l_month := s_month || h_month;
    IF cardinality(l_team) = 0 THEN
        NULL;  -- nothing to change: replays and errors only
    ELSIF cardinality(l_team) = 1 THEN  -- one item: its month, if any
        PERFORM 1 FROM billing_months b
         WHERE b.team_id = l_team[1] AND b.period_start = l_month[1]
           FOR NO KEY UPDATE;
    ELSE
        PERFORM 1
           FROM (SELECT DISTINCT l_team[j] AS t, l_month[j] AS ms
                   FROM generate_subscripts(l_team, 1) j
                  WHERE l_month[j] IS NOT NULL
                  ORDER BY 1, 2) k,
                LATERAL (SELECT 1 FROM billing_months b
                          WHERE b.team_id = k.t AND b.period_start = k.ms
                            FOR NO KEY UPDATE) l;
    END IF;

    -- 4. Settlements: a held charge takes its new state and moves its tokens from
    --    held to spent (captured) or back (released, expired), one update per month.
    --    One charge (a lone call, most captures) takes the statements' one-row form:
    --    the set form's aggregate and CTE cost more to start than the whole work
    --    on one row (about 8 % of a lone hold+capture's Postgres CPU, with the
    --    holds' below). Both forms are the same arithmetic; the property test
    --    (tests/test_group_commit.py: a batch against one call per item) runs both.
    IF cardinality(settled) = 1 THEN
        UPDATE charges ch
           SET state = s_state[array_position(s_charge, ch.id)],
               settled_at = s_at[array_position(s_charge, ch.id)]
         WHERE ch.id = settled[1]
        RETURNING * INTO c;
        UPDATE billing_months b
           SET free_held = b.free_held - c.free_tokens,
               additional_held = b.additional_held - c.additional_tokens,
               free_spent = b.free_spent
                   + CASE WHEN c.state = 'captured' THEN c.free_tokens ELSE 0 END,
               additional_spent = b.additional_spent
                   + CASE WHEN c.state = 'captured' THEN c.additional_tokens ELSE 0 END
         WHERE b.team_id = c.team_id AND b.period_start = c.period_start;
    ELSIF cardinality(settled) > 1 THEN
        WITH done AS (
            UPDATE charges ch
               SET state = s_state[array_position(s_charge, ch.id)],
                   settled_at = s_at[array_position(s_charge, ch.id)]
             WHERE ch.id = ANY (settled)
            RETURNING ch.id, ch.team_id, ch.period_start, ch.free_tokens, ch.additional_tokens,
                      ch.state
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
               AND b.team_id = ANY (s_team)
        )
        SELECT count(*) INTO i FROM done;
    END IF;

    -- 5. What each settlement gets back (the holds below change no column it reads);
    --    an error with the ids it concerns.
    IF ns > 0 THEN
        RETURN QUERY
        SELECT 'settle', u.i::integer, e.code,
               CASE WHEN e.code IS NOT NULL THEN tokens_error_message(e.code, e.detail) END,
               e.detail,
               ch.id, ch.team_id, ch.period_start, mb.period_end, ch.idempotency_key, ch.action,
               ch.quantity, ch.tokens, ch.free_tokens, ch.additional_tokens, ch.state,
               ch.job_id, ch.lead_id, ch.held_at, ch.settled_at, NULL::boolean,
               ch.id = ANY (settled), NULL::bigint, NULL::bigint, mb.unbilled, mb.reached
          FROM (SELECT j AS i, s_charge[j] AS id, s_state[j] AS st
                  FROM generate_subscripts(s_charge, 1) j) u
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

    IF nh = 0 THEN
        RETURN;
    END IF;

    -- 6. Holds, decided one by one on each month's running totals: free first, then
    --    additional up to the team's limit, refused whole when short...
    --    Each month's row is read after the settlements above, in one statement for
    --    the call, into its group's running totals; then the holds are decided in
    --    array order, each on its month's totals.
    IF nh = 1 THEN  -- a lone hold: its month, if it is to be held (not an error or a replay)
        IF h_month[1] IS NOT NULL THEN
            SELECT * INTO m FROM billing_months b
             WHERE b.team_id = h_team[1] AND b.period_start = h_month[1];
            g_free_av[1] := m.free_granted - m.free_held - m.free_spent;
            g_add_av[1] := greatest(h_lim[1] - m.additional_held - m.additional_spent, 0);
            h_group[1] := 1;
        END IF;
    ELSE
    FOR k IN
        SELECT d.items, b.free_granted - b.free_held - b.free_spent AS free_av,
               b.additional_held + b.additional_spent AS add_used
          FROM (SELECT h_team[j] AS t, h_month[j] AS ms, array_agg(j::integer) AS items
                  FROM generate_subscripts(h_team, 1) j
                 WHERE h_month[j] IS NOT NULL
                 GROUP BY 1, 2) d
          JOIN LATERAL (SELECT * FROM billing_months b1
                         WHERE b1.team_id = d.t AND b1.period_start = d.ms OFFSET 0) b ON true
    LOOP
        g := coalesce(g, 0) + 1;
        g_free_av[g] := k.free_av;
        g_add_av[g] := greatest(h_lim[k.items[1]] - k.add_used, 0);
        FOREACH i IN ARRAY k.items LOOP
            h_group[i] := g;
        END LOOP;
    END LOOP;
    END IF;
    FOR i IN 1..nh LOOP
        g := h_group[i];
        CONTINUE WHEN g IS NULL;  -- an error or a known key: not to be held
        h_replayed[i] := false;
        IF h_tokens[i] <= g_free_av[g] + g_add_av[g] THEN
            h_free[i] := least(h_tokens[i], g_free_av[g]);
            g_free_av[g] := g_free_av[g] - h_free[i];
            g_add_av[g] := g_add_av[g] - (h_tokens[i] - h_free[i]);
            new_pos := new_pos || i;
        ELSE
            h_refused[i] := true;
        END IF;
        h_free_av[i] := g_free_av[g];
        h_add_av[i] := g_add_av[g];
    END LOOP;

    --    ...then inserted together, and each month's held totals raised once by
    --    what was inserted (a batch holds a (team, key) once: its key finds it). A key that a concurrent transaction committed since
    --    step 2 is not inserted (ON CONFLICT) and answers with that charge; the
    --    room it was given stays unused by this call.
    IF cardinality(new_pos) > 0 THEN
        FOR k IN
            INSERT INTO charges (team_id, period_start, idempotency_key, action, quantity,
                                 tokens, free_tokens, additional_tokens, state, job_id,
                                 lead_id, held_at)
            SELECT h_team[j], h_month[j], h_key[j], h_action[j], h_quantity[j],
                   h_tokens[j], h_free[j], h_tokens[j] - h_free[j], 'held', h_job[j],
                   h_lead[j], h_at[j]
              FROM (SELECT new_pos[n] AS j FROM generate_subscripts(new_pos, 1) n) p
            ON CONFLICT (team_id, idempotency_key) DO NOTHING
            RETURNING charges.id, charges.team_id, charges.idempotency_key
        LOOP
            FOREACH i IN ARRAY array_positions(h_key, k.idempotency_key) LOOP
                IF h_team[i] = k.team_id THEN
                    h_charge[i] := k.id;
                    inserted := inserted || i;
                END IF;
            END LOOP;
        END LOOP;
        IF cardinality(inserted) = 1 THEN  -- one new charge: the one-row form (see step 4)
            UPDATE billing_months b
               SET free_held = b.free_held + h_free[inserted[1]],
                   additional_held = b.additional_held
                       + h_tokens[inserted[1]] - h_free[inserted[1]]
             WHERE b.team_id = h_team[inserted[1]] AND b.period_start = h_month[inserted[1]];
        ELSIF cardinality(inserted) > 1 THEN
            UPDATE billing_months b
               SET free_held = b.free_held + d.free_tokens,
                   additional_held = b.additional_held + d.additional_tokens
              FROM (SELECT h_team[j] AS team_id, h_month[j] AS period_start,
                           sum(h_free[j]) AS free_tokens,
                           sum(h_tokens[j] - h_free[j]) AS additional_tokens
                      FROM (SELECT inserted[n] AS j FROM generate_subscripts(inserted, 1) n) p
                     GROUP BY 1, 2) d
             WHERE b.team_id = d.team_id AND b.period_start = d.period_start
               AND b.team_id = ANY (h_team);
        END IF;
    END IF;

    --    A refusal, or a key that lost the race, looks for a charge with its key.
    FOR i IN 1..nh LOOP
        CONTINUE WHEN h_month[i] IS NULL OR h_charge[i] IS NOT NULL;
        c := tokens_charge_by_key(h_team[i], h_key[i]);
        CONTINUE WHEN c.id IS NULL;  -- refused
        h_charge[i] := c.id;
        h_end[i] := NULL;  -- its month is the charge's
        h_refused[i] := false;
        h_free_av[i] := NULL;
        h_add_av[i] := NULL;
        IF c.action <> h_action[i] OR c.quantity <> h_quantity[i] THEN
            h_code[i] := 'TK002';
        ELSE
            h_replayed[i] := true;
        END IF;
    END LOOP;

    -- 7. What each hold gets back, read after every change above; an error with
    --    the ids it concerns.
    RETURN QUERY
    SELECT 'hold', u.i::integer, h_code[u.i],
           CASE WHEN h_code[u.i] IS NOT NULL THEN tokens_error_message(h_code[u.i], e.detail) END,
           e.detail,
           ch.id, u.t, coalesce(ch.period_start, h_month[u.i]),
           coalesce(h_end[u.i], (SELECT b.period_end FROM billing_months b
                                  WHERE b.team_id = u.t AND b.period_start = ch.period_start)),
           h_key[u.i], h_action[u.i], h_quantity[u.i], coalesce(ch.tokens, h_tokens[u.i]),
           coalesce(ch.free_tokens, 0), coalesce(ch.additional_tokens, 0),
           CASE WHEN h_refused[u.i] THEN 'refused' ELSE ch.state END,
           ch.job_id, ch.lead_id, ch.held_at, ch.settled_at, h_replayed[u.i],
           NULL::boolean, h_free_av[u.i], h_add_av[u.i], NULL::bigint, NULL::boolean
      FROM (SELECT j AS i, h_team[j] AS t FROM generate_subscripts(h_team, 1) j) u
      LEFT JOIN LATERAL (SELECT * FROM charges c1 WHERE c1.id = h_charge[u.i] OFFSET 0) ch
        ON true
      -- The detail inside a CASE: as a lateral `SELECT ... WHERE h_code[u.i] IS NOT
      -- NULL`, the planner pulled it up and built the object for every hold, errors
      -- or not (about 3 % of Postgres's CPU at c32, perf).
      CROSS JOIN LATERAL (
          SELECT CASE WHEN h_code[u.i] IS NOT NULL THEN jsonb_build_object(
                     'team', u.t, 'key', h_key[u.i], 'charge', ch.id,
                     'action', h_action[u.i], 'quantity', h_quantity[u.i],
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
                                      ARRAY[p_at], ARRAY[p_job], ARRAY[p_lead]);
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
                                      '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
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
           a.held_at, a.settled_at
      FROM tokens_apply(ids, array_fill('expired'::text, ARRAY[n]), array_fill(p_at, ARRAY[n]),
                        '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}') a
     WHERE a.changed
     ORDER BY a.team_id, a.period_start, a.charge_id;
END
$$;
