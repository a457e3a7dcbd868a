// Braze Segment Exporter - Azure infrastructure (deployed with `azd up` / `azd provision`).
//
// Layout follows the Azure-Samples Flex Consumption azd quickstarts: subscription scope, one
// resource group, AVM modules for identity/plan/monitoring, and local modules under ./app for the
// resources whose security settings this project owns (storage, Key Vault, function app, RBAC).

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
var exportSplitsQueueName = 'export-splits'
var exportPartitionsQueueName = 'export-partitions'
var exportChunksQueueName = 'export-chunks'
var exportRunsTableName = 'exportruns'
var rateLimitsTableName = 'ratelimits'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// Identity the function app runs as; all data-plane access is granted to it in app/rbac.bicep.
module apiUserAssignedIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'apiUserAssignedIdentity'
  scope: rg
  params: {
    name: !empty(apiUserAssignedIdentityName) ? apiUserAssignedIdentityName : '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    tags: tags
  }
}

// Flex Consumption plan (one app per plan).
module appServicePlan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'appserviceplan'
  scope: rg
  params: {
    name: !empty(appServicePlanName) ? appServicePlanName : '${abbrs.webServerFarms}${resourceToken}'
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
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
      exportSplitsQueueName
      exportPartitionsQueueName
      exportChunksQueueName
      '${exportJobsQueueName}-poison'
      '${exportSplitsQueueName}-poison'
      '${exportPartitionsQueueName}-poison'
      '${exportChunksQueueName}-poison'
    ]
    tables: [
      exportRunsTableName
      rateLimitsTableName
    ]
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
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
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
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
    applicationInsightsName: monitoring.outputs.name
    identityId: apiUserAssignedIdentity.outputs.resourceId
    identityClientId: apiUserAssignedIdentity.outputs.clientId
    runtimeName: 'python'
    runtimeVersion: '3.11'
    instanceMemoryMB: 2048
    maximumInstanceCount: maximumInstanceCount
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
    functionAppLogsToLogAnalytics: functionAppLogsToLogAnalytics
    appSettings: {
      KEY_VAULT_URL: keyVault.outputs.vaultUri
      EXPORT_DEFINITIONS_BLOB: exportDefinitionsBlob
    }
  }
}

// Data-plane roles for the app identity (and optionally the deploying user).
module rbac 'app/rbac.bicep' = {
  name: 'rbacAssignments'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.name
    keyVaultName: keyVault.outputs.name
    managedIdentityPrincipalId: apiUserAssignedIdentity.outputs.principalId
    userIdentityPrincipalId: principalId
    userIdentityPrincipalType: principalType
    allowUserIdentityPrincipal: allowUserIdentityPrincipal
  }
}

// Monitoring: workspace-based Application Insights with local (key) auth disabled; the app sends
// telemetry with its managed identity (Monitoring Metrics Publisher).
module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: '${uniqueString(deployment().name, location)}-loganalytics'
  scope: rg
  params: {
    name: !empty(logAnalyticsName) ? logAnalyticsName : '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

module monitoring 'br/public:avm/res/insights/component:0.6.0' = {
  name: '${uniqueString(deployment().name, location)}-appinsights'
  scope: rg
  params: {
    name: !empty(applicationInsightsName) ? applicationInsightsName : '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true
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
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
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

output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.name
