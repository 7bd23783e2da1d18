-- Schema version 2: a peer proves it owns its name with a secret token;
-- the registry keeps the token's SHA-256.
ALTER TABLE peers ADD COLUMN token_hash TEXT;
