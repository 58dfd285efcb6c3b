-- The errors the money functions raise on purpose: one message per code, written once.
--
-- Re-applied by `tokens migrate` whenever this file changes (after the
-- versioned migrations, in the same transaction; db/migrate.py lists the files
-- in the order they are applied).
--
-- Errors raised on purpose carry SQLSTATE TK0xx, their message written once
-- in tokens_error_message, and DETAIL = a JSON object of the ids they concern
-- (translated in ledger/errors.py):
--   TK001 unknown team                TK002 idempotency key reused with other parameters
--   TK003 unknown charge              TK004 charge already settled otherwise
--   TK005 anchor change conflicts with billing months already opened
--   TK006 a settlement to a state that is not one

DROP FUNCTION IF EXISTS tokens_error_message(text, jsonb) CASCADE;
DROP FUNCTION IF EXISTS tokens_raise(text, jsonb) CASCADE;

-- Every error raised on purpose: its message from its code and DETAIL (the ids
-- it concerns, as JSON). tokens_apply gives an item's error as these three
-- columns; tokens_raise raises them.
CREATE FUNCTION tokens_error_message(p_code text, p_detail jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE p_code
    WHEN 'TK001' THEN format('unknown team %s', p_detail->>'team')
    WHEN 'TK002' THEN format(
        'idempotency key %s of team %s was used for %s x%s (charge %s), not %s x%s',
        p_detail->>'key', p_detail->>'team', p_detail->>'used_action',
        p_detail->>'used_quantity', p_detail->>'charge', p_detail->>'action',
        p_detail->>'quantity')
    WHEN 'TK003' THEN format('unknown charge %s', p_detail->>'charge')
    WHEN 'TK004' THEN format('charge %s is already %s, it cannot be %s',
                             p_detail->>'charge', p_detail->>'state', p_detail->>'wanted')
    WHEN 'TK005' THEN format(
        'team %s already has a billing month starting at or after %s, where the new anchor %s '
        'would take effect', p_detail->>'team', p_detail->>'from', p_detail->>'anchor')
    WHEN 'TK006' THEN format('cannot settle a charge as %s', p_detail->>'wanted')
END;

CREATE FUNCTION tokens_raise(p_code text, p_detail jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = p_code, MESSAGE = tokens_error_message(p_code, p_detail),
                          DETAIL = p_detail::text;
END
$$;
