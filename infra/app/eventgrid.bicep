// Event Grid system topic for the storage account, created at provision time.
//
// The `segment_dropped` blob trigger runs with source=EventGrid (the only blob trigger source on
// Flex Consumption): Event Grid pushes BlobCreated events for the `segments` container to the
// Functions blob extension webhook. This module creates only what can exist before the code is
// deployed:
// - the system topic on the storage account, with a system-assigned identity;
// - Storage Blob Data Contributor for that identity on the dead-letter container only, so the event
//   subscription can dead-letter with the topic's identity (shared keys are disabled on the account);
// - diagnostic settings (delivery failures and metrics) to Log Analytics.
//
// The event subscription itself needs the function app's `blobs_extension` system key, which only
// exists after `azd deploy`; it is created by the azd postdeploy hook (scripts/postdeploy-eventgrid.*)
// from ../postdeploy/eventgrid-subscription.bicep. See infra/README.md, "Event Grid".
//
// Written as plain resources rather than the AVM event-grid/system-topic module the quickstart uses,
// like app/storage.bicep: the identity, the role scope and the diagnostics stay visible here and in
// checkov's scan.
//
// A storage account can have only one system topic; if one was created by hand (portal), delete it
// or the deployment fails.

@description('Name of the system topic.')
@minLength(3)
@maxLength(128)
param name string

@description('Must be the storage account\'s region.')
param location string = resourceGroup().location
param tags object = {}

@description('Name of the existing storage account whose blob events the topic publishes.')
param storageAccountName string

@description('Existing blob container (in that account) that receives undeliverable events.')
param deadLetterContainerName string

@description('Log Analytics workspace for delivery-failure logs and metrics. Empty = no diagnostic settings.')
param logAnalyticsWorkspaceId string = ''

// Storage Blob Data Contributor: lets Event Grid write dead-lettered events with the topic identity.
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deadLetterContainerName
}

// 2025-02-15 is a stable (non-preview) Microsoft.EventGrid API version: checked against the Bicep
// type definitions (Azure/bicep-types-az, generated/eventgrid/microsoft.eventgrid/2025-02-15),
// which list systemTopics and systemTopics/eventSubscriptions at that version.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// Scoped to the dead-letter container, not the account: the topic identity can write nowhere else.
resource deadLetterRoleAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, systemTopic.id, storageBlobDataContributorRoleId)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: systemTopic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource systemTopicDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'to-log-analytics'
  scope: systemTopic
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    // For system topics this is the DeliveryFailures log: why an event could not be delivered
    // (webhook errors, handshake failures) before it was retried or dead-lettered.
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output name string = systemTopic.name
output resourceId string = systemTopic.id
output principalId string = systemTopic.identity.principalId
