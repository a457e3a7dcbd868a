// The exporter's function app on the Flex Consumption plan (Python 3.11, Linux).
//
// Shape follows Azure-Samples/azure-functions-flex-consumption-samples (IaC/bicep) and the
// `functions-flexconsumption.bicep` module of the azd quickstarts, written as a plain
// Microsoft.Web/sites resource so checkov can see https/TLS/identity settings.
//
// Flex Consumption rules that matter here:
// - runtime, scale and deployment live in `functionAppConfig`, never in app settings;
// - FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE,
//   WEBSITE_CONTENTSHARE, WEBSITE_CONTENTAZUREFILECONNECTIONSTRING, SCM_DO_BUILD_DURING_DEPLOYMENT,
//   ENABLE_ORYX_BUILD, WEBSITE_TIME_ZONE and TZ must not be set (see the "Flex Consumption plan
//   deprecations" table in the Functions app settings reference);
// - App Service site-config properties such as alwaysOn, ftpsState, linuxFxVersion,
//   functionAppScaleLimit or preWarmedInstanceCount are rejected by ARM (error 51021) in newer
//   regions, so they are not set.

param name string
param location string = resourceGroup().location
param tags object = {}

@description('azd service name; becomes the azd-service-name tag azd deploy looks for.')
param serviceName string = 'api'

@description('Resource ID of the Flex Consumption (FC1) plan.')
param appServicePlanId string

@description('Name of an existing storage account used for AzureWebJobsStorage and the deployment package.')
param storageAccountName string

@description('Blob container that holds the deployment package.')
param deploymentStorageContainerName string

@description('Name of an existing Application Insights component (local auth disabled).')
param applicationInsightsName string

@description('Resource ID of the user-assigned managed identity the app runs as.')
param identityId string

@description('Client ID of that identity.')
param identityClientId string

@allowed([
  'python'
])
param runtimeName string = 'python'

@allowed([
  '3.11'
])
param runtimeVersion string = '3.11'

@description('Memory per instance. 2048 MB is the Flex default and gives one vCPU.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Maximum on-demand instances per function scale group. Flex minimum is 40.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Application-specific settings, merged over the platform settings built here.')
param appSettings object = {}

@description('Put App Service Authentication (Microsoft Entra ID) in front of the app: EXPORT_API_AUTH=entra.')
param easyAuth bool = false

@description('With easyAuth: the application (client) id of the Entra app registration whose tokens are accepted. Left empty, no token is accepted: every call gets 401 (fail closed).')
param easyAuthClientId string = ''

@description('Log Analytics workspace for the diagnostic setting. Empty = none.')
param logAnalyticsWorkspaceId string = ''

@description('Also send FunctionAppLogs to Log Analytics. Off by default: the same telemetry already reaches Application Insights, and on Flex the diagnostic logger has been reported to ignore host.json log levels (Azure/azure-functions-host#11434), which can multiply ingestion cost.')
param functionAppLogsToLogAnalytics bool = false

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Host storage over the user-assigned identity. All three endpoints are set: queue triggers and
// Event Grid blob triggers need the queue endpoint, the exporter's run state lives in Table storage.
var platformAppSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
  // DefaultAzureCredential / ManagedIdentityCredential pick the user-assigned identity from here.
  AZURE_CLIENT_ID: identityClientId
  // Telemetry is accepted only with an Entra token (Application Insights has local auth disabled).
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // glibc gives each of the Braze client's many threads its own heap arena by default: measured
  // locally, a worker's peak RSS over one 1M export was 670-740 MB with the default, 360-420 MB
  // with 2 arenas, at the same speed.
  MALLOC_ARENA_MAX: '2'
}

var allAppSettings = union(appSettings, platformAppSettings)

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17:No mutual TLS - HTTP callers authenticate with function keys (and Entra ID tokens with EXPORT_API_AUTH=entra); platform client certificates are not supported on Flex Consumption.
  // checkov:skip=CKV_AZURE_78:siteConfig.ftpsState is rejected on Flex Consumption (ARM 51021); Flex has no FTP publishing, code is deployed from the blob container.
  // checkov:skip=CKV_AZURE_18:http20Enabled is left at the platform default rather than risk an ARM rejection of App Service site-config properties on Flex.
  // checkov:skip=CKV_AZURE_67:The HTTP version is left at the platform default, as for CKV_AZURE_18.
  // checkov:skip=CKV_AZURE_212:Instance counts are an App Service plan concept; Flex scales each function group on demand (alwaysReady can be added per deployment).
  // checkov:skip=CKV_AZURE_213:The app exposes no health-check endpoint; it is an event-driven worker (queues, timer, Event Grid).
  // checkov:skip=CKV_AZURE_222:No VNet/private endpoint in the default deployment; the HTTP trigger must be reachable.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: appServicePlanId
    httpsOnly: true
    // Lets @Microsoft.KeyVault(...) app-setting references resolve with the same identity if they
    // are ever used; the exporter itself reads secrets in code via KEY_VAULT_URL.
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: [
        for setting in items(allAppSettings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentStorageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: runtimeName
        version: runtimeVersion
      }
    }
  }
}

// App Service Authentication ("Easy Auth") with Microsoft Entra ID, when EXPORT_API_AUTH=entra.
// It validates the caller's bearer token, strips any X-MS-CLIENT-PRINCIPAL header a caller sends
// and adds its own, from which the app reads the caller's app roles (shared/core/access.py). No
// client secret: it only validates tokens. Event Grid's blob-trigger webhook authenticates with
// the blobs_extension system key, so its path stays outside.
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = if (easyAuth) {
  // checkov:skip=CKV_AZURE_13:This resource is the App Service Authentication setting itself (authsettingsV2); checkov looks for the older authsettings shape.
  // checkov:skip=CKV_AZURE_63:checkov reads every Microsoft.Web/sites/config resource as the site's web config; this one is authsettingsV2, which has no such property.
  // checkov:skip=CKV_AZURE_65:checkov reads every Microsoft.Web/sites/config resource as the site's web config; this one is authsettingsV2, which has no such property.
  // checkov:skip=CKV_AZURE_66:checkov reads every Microsoft.Web/sites/config resource as the site's web config; this one is authsettingsV2, which has no such property.
  // checkov:skip=CKV_AZURE_80:checkov reads every Microsoft.Web/sites/config resource as the site's web config; this one is authsettingsV2, which has no such property.
  // checkov:skip=CKV_AZURE_88:checkov reads every Microsoft.Web/sites/config resource as the site's web config; this one is authsettingsV2, which has no such property.
  // checkov:skip=CKV_AZURE_222:checkov reads every Microsoft.Web/sites/config resource as the site's web config; this one is authsettingsV2, which has no such property.
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: [
        '/runtime/webhooks/blobs'
      ]
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: easyAuthClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            easyAuthClientId
            'api://${easyAuthClientId}'
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

resource functionAppDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'to-log-analytics'
  scope: functionApp
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: functionAppLogsToLogAnalytics
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

output SERVICE_API_NAME string = functionApp.name
output SERVICE_API_URI string = 'https://${functionApp.properties.defaultHostName}'
output resourceId string = functionApp.id
