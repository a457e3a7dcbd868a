# azd postdeploy hook (PowerShell 7.2+; azure.yaml runs it with `shell: pwsh` on Windows).
# Same steps as postdeploy-eventgrid.sh - keep the two in step.
#
# Creates or updates the Event Grid subscription that delivers BlobCreated events for the
# `segments` container to the `segment_dropped` blob trigger. It cannot be part of
# `azd provision`: the webhook URL carries the function app's `blobs_extension` system key, which
# the Functions host creates only once the deployed code (with an Event Grid blob trigger) has
# started. So this hook
#   1. waits until that key exists (nudging the app awake while it waits),
#   2. deploys infra/postdeploy/eventgrid-subscription.bicep to the resource group. The template
#      reads the key itself with listKeys, so the key never passes through this script, its
#      command lines or its output (and no URL containing '&' goes through az.cmd's cmd.exe parsing).
# Re-running is safe: a fixed deployment name and subscription name, and ARM PUT semantics, update
# the one subscription in place. Run it by hand with `pwsh ./scripts/postdeploy-eventgrid.ps1` from
# the repository root (values come from the current azd environment).
#
# Needs: Azure CLI (`az login` to the tenant of the azd environment; Bicep is installed by az on
# first use). Optional environment: EVENTGRID_KEY_WAIT_SECONDS (default 600),
# EVENTGRID_MAX_DELIVERY_ATTEMPTS (30), EVENTGRID_EVENT_TTL_MINUTES (1440).

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0

function Write-Log([string] $Message) {
    Write-Host "postdeploy(eventgrid): $Message"
}

function Stop-Hook([string] $Message) {
    [Console]::Error.WriteLine("postdeploy(eventgrid): ERROR: $Message")
    exit 1
}

# Runs a native command with stdout and stderr captured together. Error records from a redirected
# stderr must not trip $ErrorActionPreference = 'Stop'; the exit code decides.
function Invoke-Native([string] $Command, [string[]] $Arguments) {
    $previous = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        $output = & $Command @Arguments 2>&1
        $exitCode = $LASTEXITCODE
    }
    finally {
        $ErrorActionPreference = $previous
    }
    return [pscustomobject]@{
        ExitCode = $exitCode
        Output   = (($output | ForEach-Object { "$_" }) -join "`n").Trim()
    }
}

# azd passes its environment values to hooks as environment variables; when the script is run by
# hand, fall back to the current azd environment.
function Get-EnvValue([string] $Name) {
    $value = [Environment]::GetEnvironmentVariable($Name)
    if ([string]::IsNullOrEmpty($value) -and (Get-Command azd -ErrorAction SilentlyContinue)) {
        $result = Invoke-Native 'azd' @('env', 'get-value', $Name)
        $value = if ($result.ExitCode -eq 0) { $result.Output } else { '' }
    }
    if ($null -eq $value) { return '' }
    return ([string]$value).Trim()
}

function Get-RequiredValue([string] $Name) {
    $value = Get-EnvValue $Name
    if ([string]::IsNullOrEmpty($value)) {
        Stop-Hook "$Name is not set. Run 'azd provision' (or 'azd up') first; it is an output of infra/main.bicep."
    }
    return $value
}

function Get-ValueOrDefault([string] $Name, [string] $Default) {
    $value = Get-EnvValue $Name
    if ([string]::IsNullOrEmpty($value)) { return $Default }
    return $value
}

$template = Join-Path $PSScriptRoot '..' 'infra' 'postdeploy' 'eventgrid-subscription.bicep'
if (-not (Test-Path $template -PathType Leaf)) {
    Stop-Hook "template not found: $template"
}

if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    Stop-Hook 'Azure CLI (az) is required for this hook: https://learn.microsoft.com/cli/azure/install-azure-cli'
}

$subscriptionId = Get-RequiredValue 'AZURE_SUBSCRIPTION_ID'
$resourceGroup = Get-RequiredValue 'AZURE_RESOURCE_GROUP'
$functionApp = Get-RequiredValue 'AZURE_FUNCTION_NAME'
$systemTopic = Get-RequiredValue 'AZURE_EVENTGRID_SYSTEM_TOPIC_NAME'
$storageAccountId = Get-RequiredValue 'AZURE_STORAGE_ACCOUNT_ID'
$segmentsContainer = Get-RequiredValue 'SEGMENTS_CONTAINER_NAME'
$deadLetterContainer = Get-RequiredValue 'EVENTGRID_DEADLETTER_CONTAINER_NAME'
$functionName = Get-RequiredValue 'SEGMENT_DROP_FUNCTION_NAME'
$appUri = Get-EnvValue 'SERVICE_API_URI'

$keyWaitSeconds = [int](Get-ValueOrDefault 'EVENTGRID_KEY_WAIT_SECONDS' '600')
$maxDeliveryAttempts = [int](Get-ValueOrDefault 'EVENTGRID_MAX_DELIVERY_ATTEMPTS' '30')
$eventTtlMinutes = [int](Get-ValueOrDefault 'EVENTGRID_EVENT_TTL_MINUTES' '1440')

$account = Invoke-Native 'az' @('account', 'show', '--subscription', $subscriptionId, '--query', 'id', '--output', 'tsv')
if ($account.ExitCode -ne 0) {
    Stop-Hook "Azure CLI cannot use subscription $subscriptionId. Run 'az login' (same tenant as 'azd auth login'). $($account.Output)"
}

# A request to the app starts the Functions host if it is scaled to zero; starting is what creates
# the blobs_extension key. Best effort: any answer, or none, is fine.
function Invoke-WakeApp {
    if (-not [string]::IsNullOrEmpty($appUri)) {
        try {
            Invoke-WebRequest -Uri "$appUri/" -Method Get -TimeoutSec 60 -SkipHttpErrorCheck | Out-Null
        }
        catch {
            Write-Verbose "wake-up request failed: $_"
        }
    }
}

# 1. Wait for the key. Only its type ("string" or "null") is queried, never its value.
Write-Log "waiting for the '$functionApp' blobs_extension system key (up to $($keyWaitSeconds)s)"
$deadline = (Get-Date).AddSeconds($keyWaitSeconds)
$lastError = ''
while ($true) {
    $keyType = Invoke-Native 'az' @('functionapp', 'keys', 'list', '--subscription', $subscriptionId,
        '--resource-group', $resourceGroup, '--name', $functionApp,
        '--query', 'type(systemKeys.blobs_extension)', '--output', 'tsv')
    if ($keyType.ExitCode -eq 0 -and $keyType.Output -eq 'string') {
        break
    }
    if ($keyType.ExitCode -ne 0) { $lastError = $keyType.Output }
    if ((Get-Date) -ge $deadline) {
        Stop-Hook ("the blobs_extension key did not appear within $($keyWaitSeconds)s. Check that '$functionName' is listed by " +
            "'az functionapp function list -g $resourceGroup -n $functionApp' and that the app starts (Application Insights / Log stream), " +
            "then run 'azd deploy' or this script again. Last CLI error: $lastError")
    }
    Invoke-WakeApp
    Start-Sleep -Seconds 15
}
Write-Log 'blobs_extension key present'

# 2. Create or update the subscription. Event Grid validates a new webhook with a handshake the
#    function host must answer; on a cold Flex instance that can time out, so retry a few times.
$deploymentName = 'eventgrid-segments-subscription'
$maxAttempts = 3
$attempt = 1
while ($true) {
    Write-Log "deploying event subscription (attempt $attempt/$maxAttempts): topic '$systemTopic' -> '$functionApp' function '$functionName', container '$segmentsContainer'"
    Invoke-WakeApp
    & az deployment group create --subscription $subscriptionId `
        --resource-group $resourceGroup --name $deploymentName `
        --template-file $template `
        --parameters `
        "systemTopicName=$systemTopic" `
        "functionAppName=$functionApp" `
        "functionName=$functionName" `
        "segmentsContainerName=$segmentsContainer" `
        "deadLetterStorageAccountId=$storageAccountId" `
        "deadLetterContainerName=$deadLetterContainer" `
        "maxDeliveryAttempts=$maxDeliveryAttempts" `
        "eventTimeToLiveInMinutes=$eventTtlMinutes" `
        --only-show-errors --output none
    if ($LASTEXITCODE -eq 0) { break }
    if ($attempt -ge $maxAttempts) {
        Stop-Hook "event subscription deployment failed $maxAttempts times (see the errors above). Re-run with 'azd hooks run postdeploy' or 'azd deploy'."
    }
    $attempt++
    Start-Sleep -Seconds 30
}

Write-Log "event subscription ready: BlobCreated under /blobServices/default/containers/$segmentsContainer/ -> $functionName (dead letters: $deadLetterContainer)"
