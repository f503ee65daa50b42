DROP INDEX users_preferences_gin;
ALTER TABLE users DROP COLUMN preferences;
