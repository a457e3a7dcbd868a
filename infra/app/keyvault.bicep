// Key Vault for the Braze REST API keys. Access is Azure RBAC only (no access policies).
// Secrets are created by the operator after provisioning (see infra/README.md); Bicep never
// handles secret values.

@description('Name of the vault (3-24 characters, globally unique).')
@minLength(3)
@maxLength(24)
param name string

param location string = resourceGroup().location
param tags object = {}

@description('Days a deleted vault or secret stays recoverable. With purge protection on, a deleted vault name cannot be reused until this period ends.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Log Analytics workspace that receives the vault audit log. Empty = no diagnostic settings.')
param logAnalyticsWorkspaceId string = ''

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:No VNet integration yet; the Flex app reads secrets over the public endpoint with its managed identity. Azure Functions is not a trusted service for the vault firewall, so defaultAction Deny would block it.
  // checkov:skip=CKV_AZURE_189:Same as above - public network access is needed until private endpoints are added.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource keyVaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'to-log-analytics'
  scope: keyVault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
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

output name string = keyVault.name
output resourceId string = keyVault.id
output vaultUri string = keyVault.properties.vaultUri
