-- Queries on the schema itself.

-- name: migrations_applied
-- Versions of the applied schema migrations.
SELECT version FROM odin.schema_migrations ORDER BY version;
