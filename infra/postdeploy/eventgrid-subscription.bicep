// Second deployment stage: the Event Grid subscription that feeds the `segment_dropped` blob trigger.
//
// Not part of `azd provision`. The azd postdeploy hook (scripts/postdeploy-eventgrid.sh / .ps1)
// deploys this template to the resource group after `azd deploy`, once the function app's
// `blobs_extension` system key exists (the Functions host creates it when it first starts with an
// Event Grid blob trigger in the deployed code). See infra/README.md, "Event Grid".
//
// The key is read here with listKeys, inside ARM: it never appears on a command line, in the hook's
// output, or in the deployment's parameters and outputs. Re-deploying is idempotent: ARM PUTs the
// same subscription again (same name, same settings, current key).
//
// The system topic, the dead-letter container and the topic identity's role on it are created at
// provision time by infra/app/eventgrid.bicep.

targetScope = 'resourceGroup'

@description('Existing Event Grid system topic on the storage account (AZURE_EVENTGRID_SYSTEM_TOPIC_NAME).')
param systemTopicName string

@description('Existing function app (AZURE_FUNCTION_NAME).')
param functionAppName string

@description('Name of the blob-triggered function (@bp.function_name) that receives the events.')
param functionName string = 'segment_dropped'

@description('Container whose new blobs start an export.')
param segmentsContainerName string = 'segments'

@description('Resource ID of the storage account that holds the dead-letter container (AZURE_STORAGE_ACCOUNT_ID).')
param deadLetterStorageAccountId string

@description('Container that receives events Event Grid could not deliver.')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('Name of the event subscription.')
@minLength(3)
@maxLength(64)
param eventSubscriptionName string = 'segments-blob-created'

@description('Delivery attempts before an event is dead-lettered.')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes Event Grid keeps retrying an event before it is dead-lettered.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource functionAppHost 'Microsoft.Web/sites/host@2024-04-01' existing = {
  parent: functionApp
  name: 'default'
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

// defaultHostName rather than '<name>.azurewebsites.net': apps created with a unique default
// hostname (<name>-<hash>.<region>.azurewebsites.net) are not reachable under the short form.
resource segmentsSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: eventSubscriptionName
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${functionApp.properties.defaultHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${functionName}&code=${functionAppHost.listKeys().systemKeys.blobs_extension}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      // Trailing slash: without it a container named e.g. `segments-archive` would match too.
      subjectBeginsWith: '/blobServices/default/containers/${segmentsContainerName}/'
      isSubjectCaseSensitive: false
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    // Written with the system topic's identity (Storage Blob Data Contributor on this container,
    // assigned in infra/app/eventgrid.bicep): the account accepts no shared keys.
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output eventSubscriptionName string = segmentsSubscription.name
output eventSubscriptionId string = segmentsSubscription.id
