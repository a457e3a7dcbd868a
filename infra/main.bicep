// Braze Segment Exporter - Azure infrastructure (deployed with `azd up` / `azd provision`).
//
// Layout follows the Azure-Samples Flex Consumption azd quickstarts: subscription scope, one
// resource group, one module per concern under ./app. Every resource is declared in this
// repository rather than taken from `br/public:` registry modules, so the offline checks in
// `make test` (pycep parse, checkov, tests/infra) see all of it.

targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used to name the resource group and to derive a unique token for resource names.')
param environmentName string

@minLength(1)
@description('Region for all resources. Must support Flex Consumption: az functionapp list-flexconsumption-locations -o table')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object ID of the deploying user or service principal (azd sets AZURE_PRINCIPAL_ID). Used only for optional role assignments.')
param principalId string = ''

@description('Principal type of principalId: User for an interactive azd session, ServicePrincipal in CI.')
@allowed([
  'User'
  'ServicePrincipal'
])
param principalType string = 'User'

@description('Grant principalId data access to storage/App Insights and Key Vault Secrets Officer (to store the Braze keys). Set false in production subscriptions.')
param allowUserIdentityPrincipal bool = true

@description('Maximum on-demand instances per function scale group (Flex minimum 40). Instance caps do not throttle Braze calls; the app does that itself.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per instance: 2048 MB is the Flex default (one vCPU); a worker peaks near 400 MB on a 1M-profile export.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Storage replication. LRS deploys in every region; pick ZRS/GZRS where zones exist and the data warrants it.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Days a deleted Key Vault stays recoverable (7-90). Purge protection is always on, so the vault name is blocked for this long after `azd down`.')
@minValue(7)
@maxValue(90)
param keyVaultSoftDeleteRetentionInDays int = 90

@description('Also send FunctionAppLogs to Log Analytics (telemetry already goes to Application Insights).')
param functionAppLogsToLogAnalytics bool = false

@description('Email address told when an export run fails, is stopped by a safety valve or partially succeeds. Empty = the alert rules fire in Azure Monitor only.')
param alertEmailAddress string = ''

@description('EXPORT_API_AUTH: who the HTTP API trusts. function-key (default): any function or host key may do everything. entra: App Service Authentication validates Microsoft Entra ID tokens for apiClientId, and the app checks app roles (Exports.Read, Exports.Run, Exports.Admin) and each connection\'s allowed_roles.')
@allowed([
  'function-key'
  'entra'
])
param apiAuth string = 'function-key'

@description('With apiAuth entra: the application (client) id of the API\'s Entra app registration that defines the app roles (created outside this template, see infra/README.md).')
param apiClientId string = ''

@description('EXPORT_STALL_MINUTES: minutes without progress after which a run is ended as stalled.')
param exportStallMinutes int = 30

@description('EXPORT_SPLIT_MIB: plain source files larger than this are split by several workers in parallel, in ranges of about this size.')
@minValue(1)
param exportSplitMib int = 8

@description('Days a run\'s working files (partition pieces, delivery chunks: customer emails and ids), rejected rows and report are kept in export-runs before a lifecycle rule deletes them. Snapshots are kept.')
@minValue(1)
param runFilesRetentionInDays int = 30

// Optional name overrides (empty = generated from abbreviations.json + resourceToken).
param resourceGroupName string = ''
param apiServiceName string = ''
param apiUserAssignedIdentityName string = ''
param appServicePlanName string = ''
param storageAccountName string = ''
param keyVaultName string = ''
param logAnalyticsName string = ''
param applicationInsightsName string = ''
param eventGridSystemTopicName string = ''

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}

// The Python version the app runs on in Azure. `make` creates the local venv with the same
// minor version (PYTHON in the Makefile; tests/infra checks that they agree).
var pythonVersion = '3.11'

// Start of the log line that ends every run (shared/core/report.py, RUN_ENDED); the alert
// rules in app/monitoring.bicep match on it.
var runEndedLogPrefix = 'export run ended'

var functionAppName = !empty(apiServiceName) ? apiServiceName : '${abbrs.webSitesFunctions}api-${resourceToken}'
var deploymentStorageContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'

// Names the application code relies on. Keep in sync with the app's configuration module.
var exportRunsContainerName = 'export-runs'
var exportSnapshotsContainerName = 'export-snapshots'
var exportConfigContainerName = 'export-config'
var segmentsContainerName = 'segments'
// Blob-triggered function (source=EventGrid) fed by the Event Grid subscription on segmentsContainerName.
var segmentDropFunctionName = 'segment_dropped'
// Events Event Grid could not deliver to that function, written with the system topic's identity.
var eventGridDeadLetterContainerName = 'eventgrid-deadletter'
var exportDefinitionsBlob = '${exportConfigContainerName}/exports.json'
var exportJobsQueueName = 'export-jobs'
var exportChunksQueueName = 'export-chunks'
var exportRunsTableName = 'exportruns'
var rateLimitsTableName = 'ratelimits'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// Identity the function app runs as; all data-plane access is granted to it in app/rbac.bicep.
module apiUserAssignedIdentity 'app/identity.bicep' = {
  name: 'apiUserAssignedIdentity'
  scope: rg
  params: {
    name: !empty(apiUserAssignedIdentityName) ? apiUserAssignedIdentityName : '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    tags: tags
  }
}

// Flex Consumption plan (one app per plan).
module appServicePlan 'app/plan.bicep' = {
  name: 'appserviceplan'
  scope: rg
  params: {
    name: !empty(appServicePlanName) ? appServicePlanName : '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
  }
}

// Host storage, deployment package and all exporter data.
module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    containers: [
      { name: deploymentStorageContainerName }
      { name: exportRunsContainerName }
      { name: exportSnapshotsContainerName }
      { name: exportConfigContainerName }
      { name: segmentsContainerName }
      { name: eventGridDeadLetterContainerName }
    ]
    // The Functions host creates <queue>-poison on demand; declaring them keeps them visible,
    // monitorable and covered by the same diagnostics from day one.
    queues: [
      exportJobsQueueName
      exportChunksQueueName
      '${exportJobsQueueName}-poison'
      '${exportChunksQueueName}-poison'
    ]
    tables: [
      exportRunsTableName
      rateLimitsTableName
    ]
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    runFilesPrefixes: [
      '${exportRunsContainerName}/runs/'
    ]
    runFilesRetentionInDays: runFilesRetentionInDays
  }
}

// Braze REST API keys live here (created by the operator, see infra/README.md).
module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: !empty(keyVaultName) ? keyVaultName : '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

// The exporter function app.
module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    serviceName: 'api'
    appServicePlanId: appServicePlan.outputs.resourceId
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: deploymentStorageContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    identityId: apiUserAssignedIdentity.outputs.resourceId
    identityClientId: apiUserAssignedIdentity.outputs.clientId
    runtimeName: 'python'
    runtimeVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    functionAppLogsToLogAnalytics: functionAppLogsToLogAnalytics
    appSettings: {
      KEY_VAULT_URL: keyVault.outputs.vaultUri
      EXPORT_DEFINITIONS_BLOB: exportDefinitionsBlob
      EXPORT_STALL_MINUTES: string(exportStallMinutes)
      EXPORT_SPLIT_MIB: string(exportSplitMib)
      // Only local development may send a key to a loopback Braze stand-in.
      EXPORT_ALLOW_LOOPBACK_ENDPOINTS: 'false'
      EXPORT_API_AUTH: apiAuth
    }
    easyAuth: apiAuth == 'entra'
    easyAuthClientId: apiClientId
  }
  // The app starts polling its queues and reading Key Vault as soon as it exists: let its role
  // assignments exist first, so the first runs do not fail with 403.
  dependsOn: [
    rbac
  ]
}

// Data-plane roles for the app identity (and optionally the deploying user).
module rbac 'app/rbac.bicep' = {
  name: 'rbacAssignments'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyVault.outputs.name
    managedIdentityPrincipalId: apiUserAssignedIdentity.outputs.principalId
    userIdentityPrincipalId: principalId
    userIdentityPrincipalType: principalType
    allowUserIdentityPrincipal: allowUserIdentityPrincipal
  }
}

// Monitoring: Log Analytics, workspace-based Application Insights with local (key) auth disabled
// (the app sends telemetry with its identity, Monitoring Metrics Publisher), and the alert rules
// on runs that failed, were stopped by a safety valve or partially succeeded.
module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: !empty(logAnalyticsName) ? logAnalyticsName : '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: !empty(applicationInsightsName) ? applicationInsightsName : '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    runEndedLogPrefix: runEndedLogPrefix
    alertEmailAddress: alertEmailAddress
  }
}

// Event Grid system topic on the storage account (blob-drop trigger). The topic, its identity and
// the dead-letter role exist from provision time; the BlobCreated subscription to the function's
// blob-extension webhook needs the `blobs_extension` system key, which only exists after the code is
// deployed, so the azd postdeploy hook creates it from postdeploy/eventgrid-subscription.bicep.
module eventGrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    name: !empty(eventGridSystemTopicName) ? eventGridSystemTopicName : '${abbrs.eventGridSystemTopics}${resourceToken}'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    deadLetterContainerName: eventGridDeadLetterContainerName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

// Outputs azd stores in .azure/<env>/.env (and passes to hooks).
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name

output SERVICE_API_NAME string = api.outputs.SERVICE_API_NAME
output SERVICE_API_URI string = api.outputs.SERVICE_API_URI
output AZURE_FUNCTION_NAME string = api.outputs.SERVICE_API_NAME
output AZURE_FUNCTION_IDENTITY_CLIENT_ID string = apiUserAssignedIdentity.outputs.clientId

output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_ACCOUNT_ID string = storage.outputs.resourceId
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.primaryBlobEndpoint
output AZURE_STORAGE_QUEUE_ENDPOINT string = storage.outputs.primaryQueueEndpoint
output AZURE_STORAGE_TABLE_ENDPOINT string = storage.outputs.primaryTableEndpoint
output SEGMENTS_CONTAINER_NAME string = segmentsContainerName
output EXPORT_CONFIG_CONTAINER_NAME string = exportConfigContainerName
output EXPORT_RUNS_CONTAINER_NAME string = exportRunsContainerName
output EXPORT_DEFINITIONS_BLOB string = exportDefinitionsBlob

// Read by the postdeploy hook (scripts/postdeploy-eventgrid.*) to create the event subscription.
output AZURE_EVENTGRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.name
output EVENTGRID_DEADLETTER_CONTAINER_NAME string = eventGridDeadLetterContainerName
output SEGMENT_DROP_FUNCTION_NAME string = segmentDropFunctionName

output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URL string = keyVault.outputs.vaultUri

output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
