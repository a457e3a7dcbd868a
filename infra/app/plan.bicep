// The Flex Consumption plan (FC1, Linux). Flex hosts one function app per plan.

param name string
param location string = resourceGroup().location
param tags object = {}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Flex Consumption offers zone redundancy only in some regions; the default deploys everywhere (runs survive a lost instance by queue retries).
  name: name
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    // Linux: Flex Consumption runs only on Linux.
    reserved: true
  }
}

output resourceId string = plan.id
