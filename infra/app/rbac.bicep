// Data-plane role assignments. Everything runs on Microsoft Entra ID: the storage account has
// shared keys disabled, Application Insights has local auth disabled and Key Vault uses RBAC.
//
// The function app's user-assigned identity gets exactly what the host and the exporter need.
// The deploying user (azd's AZURE_PRINCIPAL_ID) optionally gets the same storage/telemetry roles for
// local debugging against the real resources, plus Key Vault Secrets Officer so the operator can
// store the Braze API keys (`az keyvault secret set`); turn this off for production subscriptions
// with ALLOW_USER_IDENTITY_PRINCIPAL=false and grant access through your own process instead.

param storageAccountName string
param appInsightsName string
param keyVaultName string

@description('Principal ID of the function app\'s user-assigned managed identity.')
param managedIdentityPrincipalId string

@description('Object ID of the deploying user or CI service principal. Empty = no assignments for it.')
param userIdentityPrincipalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param userIdentityPrincipalType string = 'User'

@description('Create role assignments for userIdentityPrincipalId.')
param allowUserIdentityPrincipal bool = true

// Built-in role definition IDs.
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
}

// Storage roles: Blob Data Owner (host leases, timer singleton, deployment package, blob trigger,
// export data), Queue Data Contributor (queue triggers/outputs, poison queues, Event Grid blob
// trigger internals), Table Data Contributor (export run state).
var storageRoleIds = [
  roles.storageBlobDataOwner
  roles.storageQueueDataContributor
  roles.storageTableDataContributor
]

var assignUser = allowUserIdentityPrincipal && !empty(userIdentityPrincipalId)

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

// --- Function app identity ---------------------------------------------------------------------

// Why: the host's storage (AzureWebJobsStorage__*) and all export data; see storageRoleIds.
resource storageRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in storageRoleIds: {
    name: guid(storageAccount.id, managedIdentityPrincipalId, roleId)
    scope: storageAccount
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: managedIdentityPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

// Why: Application Insights accepts only Entra ID-authenticated telemetry (local auth disabled).
resource appInsightsRoleAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, managedIdentityPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Why: the app reads the Braze API keys (get secret); Secrets User cannot list, write or delete.
resource keyVaultRoleAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, managedIdentityPrincipalId, roles.keyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// --- Deploying user (optional) -------------------------------------------------------------------

// Why: the operator uploads exports.json and segment files, and debugs against the real account.
resource storageRoleAssignmentsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in storageRoleIds: if (assignUser) {
    name: guid(storageAccount.id, userIdentityPrincipalId, roleId)
    scope: storageAccount
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: userIdentityPrincipalId
      principalType: userIdentityPrincipalType
    }
  }
]

// Why: telemetry from a local host run against the real resources.
resource appInsightsRoleAssignmentUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (assignUser) {
  name: guid(applicationInsights.id, userIdentityPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: userIdentityPrincipalId
    principalType: userIdentityPrincipalType
  }
}

// Secrets Officer (not just Secrets User): the operator must be able to create the Braze key
// secrets. Secret values are never part of this template.
resource keyVaultRoleAssignmentUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (assignUser) {
  name: guid(keyVault.id, userIdentityPrincipalId, roles.keyVaultSecretsOfficer)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: userIdentityPrincipalId
    principalType: userIdentityPrincipalType
  }
}
