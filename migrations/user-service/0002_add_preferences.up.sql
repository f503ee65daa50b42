-- Expand: v2.0 keeps per-user preferences (the display name among them) in a JSONB document
-- and writes both `name` and `preferences->>'display_name'`; v1.0 still works on this schema.
ALTER TABLE users ADD COLUMN preferences jsonb NOT NULL DEFAULT '{}'::jsonb;
UPDATE users SET preferences = jsonb_build_object('display_name', name) WHERE name IS NOT NULL;
-- Containment queries such as `preferences @> '{"theme": "dark"}'`.
CREATE INDEX users_preferences_gin ON users USING gin (preferences jsonb_path_ops);
