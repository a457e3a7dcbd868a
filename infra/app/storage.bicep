// Storage account shared by the Functions host (AzureWebJobsStorage), the Flex Consumption
// deployment package and the exporter's own data: segment drops, export definitions, chunk blobs,
// run reports, the job/chunk queues and the run-state table.
//
// Written as plain resources (not an AVM module) so every security-relevant property is visible in
// this repository and checked by checkov, which does not follow `br/public:` module references.
// Only Microsoft Entra ID (managed identity / user) access is possible: shared keys are disabled.

@description('Name of the storage account (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

param location string = resourceGroup().location
param tags object = {}

@description('Replication. LRS is the cheapest and available in every region; choose ZRS/GZRS where the region supports availability zones and the data warrants it.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_LRS'

@description('Blob containers to create. Each item: { name: string }.')
param containers array

@description('Queues to create (names).')
param queues array

@description('Tables to create (names).')
param tables array

@description('Days a deleted blob or container can be restored.')
@minValue(1)
@maxValue(365)
param softDeleteRetentionInDays int = 7

@description('Log Analytics workspace that receives storage write/delete logs and transaction metrics. Empty = no diagnostic settings.')
param logAnalyticsWorkspaceId string = ''

@description('Blob name prefixes (container/path) whose blobs are deleted after runFilesRetentionInDays: a run\'s working files hold customer emails and ids.')
param runFilesPrefixes array = []

@minValue(1)
@description('Days a run\'s working files, rejected rows and report are kept after they were last written.')
param runFilesRetentionInDays int = 30

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:No VNet integration yet; public endpoint stays reachable but every request must carry an Entra ID token (shared keys disabled).
  // checkov:skip=CKV_AZURE_59:Same as above - the Flex app reaches storage over the public endpoint until private endpoints are added.
  // checkov:skip=CKV_AZURE_206:Replication is a per-deployment choice (skuName / AZURE_STORAGE_SKU); LRS default deploys in every Flex region.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    sasPolicy: {
      sasExpirationPeriod: '0.01:00:00'
      expirationAction: 'Log'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        // Account-scoped keys for queues and tables can only be chosen at creation time; they keep
        // the door open to customer-managed keys later.
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionInDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionInDays
    }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for container in containers: {
    parent: blobService
    name: container.name
    properties: {
      publicAccess: 'None'
    }
  }
]

// A run's files (partition pieces, delivery chunks, rejected rows, report) hold personal data and
// are needed only while the run is read back: they are deleted after the retention period. The
// snapshots that delta sync diffs against are in another container and are never deleted here.
resource runFilesLifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (!empty(runFilesPrefixes)) {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          enabled: true
          name: 'delete-run-files'
          type: 'Lifecycle'
          definition: {
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: runFilesRetentionInDays
                }
              }
            }
            filters: {
              blobTypes: [
                'blockBlob'
                'appendBlob'
              ]
              prefixMatch: runFilesPrefixes
            }
          }
        }
      ]
    }
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource storageQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for queueName in queues: {
    parent: queueService
    name: queueName
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource storageTables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for tableName in tables: {
    parent: tableService
    name: tableName
  }
]

// Diagnostic settings. StorageRead is deliberately not collected: the Functions host polls the
// queues every few seconds and reads chunk blobs constantly, so read logs would dominate the Log
// Analytics bill without adding audit value. Writes and deletes (who changed what) are kept.
var storageLogCategories = [
  {
    category: 'StorageWrite'
    enabled: true
  }
  {
    category: 'StorageDelete'
    enabled: true
  }
]
var storageMetrics = [
  {
    category: 'Transaction'
    enabled: true
  }
]

resource storageAccountDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'to-log-analytics'
  scope: storage
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    metrics: storageMetrics
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: storageLogCategories
    metrics: storageMetrics
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: storageLogCategories
    metrics: storageMetrics
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: storageLogCategories
    metrics: storageMetrics
  }
}

output name string = storage.name
output resourceId string = storage.id
output primaryBlobEndpoint string = storage.properties.primaryEndpoints.blob
output primaryQueueEndpoint string = storage.properties.primaryEndpoints.queue
output primaryTableEndpoint string = storage.properties.primaryEndpoints.table
