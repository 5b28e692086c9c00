-- The delivery ledger reads a supplier's complete downloads.
CREATE INDEX audit_downloads ON audit (action, supplier);
