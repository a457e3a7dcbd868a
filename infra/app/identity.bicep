// The user-assigned managed identity the function app runs as. Every data-plane permission the
// app needs is granted to it in rbac.bicep; nothing uses keys or connection strings.

param name string
param location string = resourceGroup().location
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output resourceId string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
