-- greyrouter: contract
-- Contract: v3.0 reads the display name from preferences only. Once this ran, a tenant can no
-- longer be routed to v1.0 or v2.0, and the schema never goes below this migration.
UPDATE users
SET preferences = preferences || jsonb_build_object('display_name', name)
WHERE name IS NOT NULL AND NOT preferences ? 'display_name';
ALTER TABLE users DROP COLUMN name;
