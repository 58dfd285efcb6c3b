-- Tokens are billed at the price in force when their billing month opened, never
-- repriced after they were spent (README "Billing with Stripe", Prices): each billing month keeps the
-- unit price and currency of the team's plan as they were when the month opened.
-- A catalog change, or a plan change mid-month, applies from the next month.

ALTER TABLE billing_months
    ADD COLUMN unit_price numeric(12, 6),
    ADD COLUMN currency text;

-- Months opened before: the price in force now is the best record there is.
UPDATE billing_months bm
   SET unit_price = p.unit_price, currency = p.currency
  FROM teams t JOIN plans p ON p.name = t.plan
 WHERE t.id = bm.team_id;

ALTER TABLE billing_months
    ALTER COLUMN unit_price SET NOT NULL,
    ALTER COLUMN currency SET NOT NULL,
    ADD CONSTRAINT billing_months_unit_price_pos CHECK (unit_price > 0);
