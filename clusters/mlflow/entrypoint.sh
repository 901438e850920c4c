#!/bin/sh
# The MLflow tracking server dyrank records into: runs and metrics in PostgreSQL, artifacts (adapters,
# reports) proxied through the server into MLFLOW_ARTIFACTS_DESTINATION (a volume or s3://...), and
# basic auth on every API call: clients send MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
# The auth config is written here from the environment (its database URI holds a password), readable
# by this user only. Used by the image in this folder and, as is, by tests/clusters/test_multinode.py.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow}"
: "${MLFLOW_AUTH_DATABASE_URI:?postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow_auth}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?the admin password, created on first start (mounted from a secret)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?the auth app's CSRF key, the same on every server replica (from a secret)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?/mlartifacts or s3://bucket/prefix}"
# A fixed name in a shared /tmp could be a file (or a link) someone else made first and can read: the
# config is written to a fresh mktemp file (mode 0600, ours alone), then renamed to an asked-for path.
umask 077
config_dir="$(dirname "${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/x}")"
config="$(mktemp "$config_dir/mlflow-basic-auth.XXXXXXXX")"
chmod 600 "$config"
cat > "$config" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
if [ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then
  mv -f "$config" "$MLFLOW_AUTH_CONFIG_PATH"
  config="$MLFLOW_AUTH_CONFIG_PATH"
fi
export MLFLOW_AUTH_CONFIG_PATH="$config"
# MLflow's job runner (GenAI scorers, trace rollups) starts about eight extra processes; dyrank needs
# tracking and artifacts only. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true brings it back.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
# The Host names clients use (a Service DNS name, say); MLflow's default allows localhost and private IPs.
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then set -- --allowed-hosts "$MLFLOW_ALLOWED_HOSTS" "$@"; fi
# 0.0.0.0 inside a container, where only the Service/port mapping reaches it; set MLFLOW_HOST=127.0.0.1 on a host.
# The backend URI (with its password) reaches mlflow through the environment, never the command line (ps).
exec mlflow server --app-name basic-auth \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" "$@"
