-- Which subscription a team follows (README, "Stripe webhooks"): only its current
-- subscription, or one created after it, changes the team. `created` is Stripe's
-- creation time of the team's current subscription, the mark a late event of an
-- older subscription is measured against. A team set that starts a new term on
-- its own (`tokens team set` with a new anchor after its subscription ended)
-- leaves the ended subscription and keeps this mark.
ALTER TABLE teams ADD COLUMN subscription_created timestamptz;

-- A subscription's `created` never changes, so any stored event of the team's
-- current subscription tells it (a subscription becomes current only through one).
UPDATE teams t
   SET subscription_created = (
       SELECT to_timestamp((e.payload -> 'data' -> 'object' ->> 'created')::numeric)
         FROM stripe_events e
        WHERE e.object_id = t.stripe_subscription
          AND e.type LIKE 'customer.subscription.%'
          AND jsonb_typeof(e.payload -> 'data' -> 'object' -> 'created') = 'number'
        ORDER BY e.received_at
        LIMIT 1)
 WHERE t.stripe_subscription IS NOT NULL;
