#!/bin/sh
# azd postdeploy hook (POSIX sh; azure.yaml runs it with `shell: sh`). Windows: postdeploy-eventgrid.ps1.
#
# Creates or updates the Event Grid subscription that delivers BlobCreated events for the
# `segments` container to the `segment_dropped` blob trigger. It cannot be part of
# `azd provision`: the webhook URL carries the function app's `blobs_extension` system key, which
# the Functions host creates only once the deployed code (with an Event Grid blob trigger) has
# started. So this hook
#   1. waits until that key exists (nudging the app awake while it waits),
#   2. deploys infra/postdeploy/eventgrid-subscription.bicep to the resource group. The template
#      reads the key itself with listKeys, so the key never passes through this script, its
#      command lines or its output.
# Re-running is safe: a fixed deployment name and subscription name, and ARM PUT semantics, update
# the one subscription in place. Run it by hand with `sh scripts/postdeploy-eventgrid.sh` from the
# repository root (values come from the current azd environment).
#
# Needs: Azure CLI (`az login` to the tenant of the azd environment; Bicep is installed by az on
# first use). Optional environment: EVENTGRID_KEY_WAIT_SECONDS (default 600),
# EVENTGRID_MAX_DELIVERY_ATTEMPTS (30), EVENTGRID_EVENT_TTL_MINUTES (1440).

set -eu

log() { printf 'postdeploy(eventgrid): %s\n' "$*"; }
fail() {
  printf 'postdeploy(eventgrid): ERROR: %s\n' "$*" >&2
  exit 1
}

# azd passes its environment values to hooks as environment variables; when the script is run by
# hand, fall back to the current azd environment.
env_value() {
  _value=$(printenv "$1" 2>/dev/null || true)
  if [ -z "$_value" ] && command -v azd >/dev/null 2>&1; then
    _value=$(azd env get-value "$1" 2>/dev/null || true)
  fi
  printf '%s' "$_value"
}

require_value() {
  _value=$(env_value "$1")
  [ -n "$_value" ] || fail "$1 is not set. Run 'azd provision' (or 'azd up') first; it is an output of infra/main.bicep."
  printf '%s' "$_value"
}

script_dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
template="$script_dir/../infra/postdeploy/eventgrid-subscription.bicep"
[ -f "$template" ] || fail "template not found: $template"

command -v az >/dev/null 2>&1 ||
  fail "Azure CLI (az) is required for this hook: https://learn.microsoft.com/cli/azure/install-azure-cli"

subscription_id=$(require_value AZURE_SUBSCRIPTION_ID)
resource_group=$(require_value AZURE_RESOURCE_GROUP)
function_app=$(require_value AZURE_FUNCTION_NAME)
system_topic=$(require_value AZURE_EVENTGRID_SYSTEM_TOPIC_NAME)
storage_account_id=$(require_value AZURE_STORAGE_ACCOUNT_ID)
segments_container=$(require_value SEGMENTS_CONTAINER_NAME)
dead_letter_container=$(require_value EVENTGRID_DEADLETTER_CONTAINER_NAME)
function_name=$(require_value SEGMENT_DROP_FUNCTION_NAME)
app_uri=$(env_value SERVICE_API_URI)

key_wait_seconds=$(env_value EVENTGRID_KEY_WAIT_SECONDS)
key_wait_seconds=${key_wait_seconds:-600}
max_delivery_attempts=$(env_value EVENTGRID_MAX_DELIVERY_ATTEMPTS)
max_delivery_attempts=${max_delivery_attempts:-30}
event_ttl_minutes=$(env_value EVENTGRID_EVENT_TTL_MINUTES)
event_ttl_minutes=${event_ttl_minutes:-1440}

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

az account show --subscription "$subscription_id" --query id --output tsv >/dev/null 2>"$errors" ||
  fail "Azure CLI cannot use subscription $subscription_id. Run 'az login' (same tenant as 'azd auth login'). $(cat "$errors")"

# A request to the app starts the Functions host if it is scaled to zero; starting is what creates
# the blobs_extension key. Best effort: any answer, or none, is fine.
wake_app() {
  if [ -n "$app_uri" ] && command -v curl >/dev/null 2>&1; then
    curl --silent --output /dev/null --max-time 60 "$app_uri/" || true
  fi
}

# 1. Wait for the key. Only its type ("string" or "null") is queried, never its value.
log "waiting for the '$function_app' blobs_extension system key (up to ${key_wait_seconds}s)"
deadline=$(($(date +%s) + key_wait_seconds))
while :; do
  key_type=$(az functionapp keys list --subscription "$subscription_id" \
    --resource-group "$resource_group" --name "$function_app" \
    --query "type(systemKeys.blobs_extension)" --output tsv 2>"$errors" || true)
  [ "$key_type" = "string" ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    fail "the blobs_extension key did not appear within ${key_wait_seconds}s. Check that '$function_name' is listed by 'az functionapp function list -g $resource_group -n $function_app' and that the app starts (Application Insights / Log stream), then run 'azd deploy' or this script again. Last CLI error: $(cat "$errors")"
  fi
  wake_app
  sleep 15
done
log "blobs_extension key present"

# 2. Create or update the subscription. Event Grid validates a new webhook with a handshake the
#    function host must answer; on a cold Flex instance that can time out, so retry a few times.
deployment_name="eventgrid-segments-subscription"
attempt=1
max_attempts=3
while :; do
  log "deploying event subscription (attempt $attempt/$max_attempts): topic '$system_topic' -> '$function_app' function '$function_name', container '$segments_container'"
  wake_app
  if az deployment group create --subscription "$subscription_id" \
    --resource-group "$resource_group" --name "$deployment_name" \
    --template-file "$template" \
    --parameters \
    systemTopicName="$system_topic" \
    functionAppName="$function_app" \
    functionName="$function_name" \
    segmentsContainerName="$segments_container" \
    deadLetterStorageAccountId="$storage_account_id" \
    deadLetterContainerName="$dead_letter_container" \
    maxDeliveryAttempts="$max_delivery_attempts" \
    eventTimeToLiveInMinutes="$event_ttl_minutes" \
    --only-show-errors --output none; then
    break
  fi
  [ "$attempt" -ge "$max_attempts" ] &&
    fail "event subscription deployment failed $max_attempts times (see the errors above). Re-run with 'azd hooks run postdeploy' or 'azd deploy'."
  attempt=$((attempt + 1))
  sleep 30
done

log "event subscription ready: BlobCreated under /blobServices/default/containers/$segments_container/ -> $function_name (dead letters: $dead_letter_container)"
