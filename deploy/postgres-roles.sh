#!/bin/sh
# docker-compose: runs once, when the PostgreSQL volume is initialised (docker-entrypoint-initdb.d).
#
# Three roles (README, "Security"): the superuser $POSTGRES_USER (this script, health checks,
# backups; never the app), wecom_owner (owns the database and its tables; only the one-shot
# `migrate` service connects as it) and wecom_app (web, workers, beat: no superuser, owns
# nothing, gets its privileges from migrations: only INSERT/SELECT on the ledger).
set -eu
: "${POSTGRES_OWNER_PASSWORD:?set POSTGRES_OWNER_PASSWORD in .env}"
: "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD in .env}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_password="$POSTGRES_OWNER_PASSWORD" -v app_password="$POSTGRES_APP_PASSWORD" <<'SQL'
CREATE ROLE wecom_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'owner_password';
CREATE ROLE wecom_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'app_password';
-- Only a superuser may create the extension; the owner's first migration then finds it.
CREATE EXTENSION IF NOT EXISTS vector;
SELECT format('ALTER DATABASE %I OWNER TO wecom_owner', current_database()) \gexec
ALTER SCHEMA public OWNER TO wecom_owner;
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO wecom_app', current_database()) \gexec
SQL
