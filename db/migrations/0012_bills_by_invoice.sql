-- Stripe's invoice events name the invoice, not the bill: find its bill by index
-- rather than by reading every bill (billing/sql/webhooks.sql invoice_news, invoice_bill).
CREATE INDEX bills_invoice_idx ON bills (stripe_invoice_id)
    WHERE stripe_invoice_id IS NOT NULL;
