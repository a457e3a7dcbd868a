// Monitoring: a Log Analytics workspace, workspace-based Application Insights with local (key)
// auth disabled (the app sends telemetry with its managed identity), and log alerts on runs that
// ended badly.
//
// Every run's end writes one log line, `<runEndedLogPrefix>: status=<status> run=<id>
// export=<name>: <message>` (shared/core/report.py, run_ended). Workspace-based
// Application Insights stores it in the workspace's AppTraces table, which the alerts query.

param logAnalyticsName string
param applicationInsightsName string
param location string = resourceGroup().location
param tags object = {}

@description('Days Log Analytics keeps data (30 is included in the ingestion price).')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

@description('Start of the log line the app writes when a run ends; must equal RUN_ENDED in shared/core/report.py (a test checks it).')
param runEndedLogPrefix string

@description('Email address told when a run fails, stops at a safety valve or partially succeeds. Empty = the alerts fire in Azure Monitor without notifying anyone.')
param alertEmailAddress string = ''

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Only Entra ID-authenticated telemetry is accepted (the app identity is Monitoring Metrics
    // Publisher, rbac.bicep); an instrumentation key alone cannot write to it.
    DisableLocalAuth: true
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmailAddress)) {
  name: 'ag-${applicationInsightsName}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'braze-exp'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

// One rule per status that needs a person: failed (nothing or not everything was sent), stopped
// (a safety valve held the run: nobody in Braze was updated) and partially succeeded (Braze
// rejected some profiles, or rows were rejected; the report lists them).
var runEndAlerts = [
  {
    status: 'failed'
    severity: 1
    description: 'An export run failed. The run\'s message and report say why; see "Operating it" in the README.'
  }
  {
    status: 'stopped'
    severity: 2
    description: 'A safety valve stopped an export run before anything was sent; a person must look and start it again with override_safety_valves if the change is intended.'
  }
  {
    status: 'partially_succeeded'
    severity: 3
    description: 'An export run partially succeeded: some rows or profiles were rejected (listed in the run\'s rejected rows).'
  }
]

resource runEndAlertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for alert in runEndAlerts: {
    name: 'alert-export-run-${replace(alert.status, '_', '-')}-${applicationInsightsName}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: 'Braze export run ${alert.status}'
      description: alert.description
      severity: alert.severity
      enabled: true
      scopes: [
        logAnalytics.id
      ]
      evaluationFrequency: 'PT5M'
      windowSize: 'PT5M'
      // The table exists only once the app has logged; validation would fail on a new workspace.
      skipQueryValidation: true
      autoMitigate: false
      criteria: {
        allOf: [
          {
            query: 'AppTraces | where Message startswith "${runEndedLogPrefix}: status=${alert.status} "'
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      actions: {
        actionGroups: empty(alertEmailAddress) ? [] : [actionGroup.id]
      }
    }
  }
]

output logAnalyticsWorkspaceId string = logAnalytics.id
output applicationInsightsName string = applicationInsights.name
