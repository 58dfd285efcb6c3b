-- Member caps: a monthly cap, in tokens, on what one member of a team may
-- spend (README "Budget control"). A hold that would take the member over it
-- is refused whole by tokens_apply, under the month lock its other rules use.

-- The member who launched a charge (the JWT's `sub`, `--member`); NULL for
-- charges of no one in particular (the app's own, older ones).
ALTER TABLE charges ADD COLUMN member text
    CONSTRAINT charges_member_valid CHECK (member <> '' AND length(member) <= 255);

CREATE TABLE member_caps (
    team_id text NOT NULL REFERENCES teams (id),
    member text NOT NULL,
    cap bigint NOT NULL CONSTRAINT member_caps_cap_nonneg CHECK (cap >= 0),
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (team_id, member)
);

-- Every cap change, as limit changes are recorded: who, when, old, new (NULL: no cap).
CREATE TABLE member_cap_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_id text NOT NULL REFERENCES teams (id),
    member text NOT NULL,
    actor text NOT NULL CONSTRAINT member_cap_changes_actor_valid CHECK (actor <> ''),
    role text NOT NULL CONSTRAINT member_cap_changes_role_admin CHECK (role = 'admin'),
    old_cap bigint,
    new_cap bigint CONSTRAINT member_cap_changes_new_nonneg CHECK (new_cap >= 0),
    changed_at timestamptz NOT NULL
);
CREATE INDEX member_cap_changes_team_idx ON member_cap_changes (team_id, id);

-- A capped member's running totals in one billing month (held and spent
-- tokens, free and additional together). A row exists only while the member
-- has a cap: it is made from the member's charges when a cap first applies in
-- that month, kept by tokens_apply from then on, and dropped with the cap.
CREATE TABLE member_months (
    team_id text NOT NULL,
    period_start timestamptz NOT NULL,
    member text NOT NULL,
    held bigint NOT NULL DEFAULT 0,
    spent bigint NOT NULL DEFAULT 0,
    CONSTRAINT member_months_totals_nonneg CHECK (held >= 0 AND spent >= 0),
    PRIMARY KEY (team_id, period_start, member),
    FOREIGN KEY (team_id, period_start) REFERENCES billing_months (team_id, period_start)
);
