// Sim's TypeScript SDK as a Sim user calls it, pointed at the gateway: each step's result (or
// the SimStudioError it threw) is printed as one JSON report for the Python test to check.
// Usage: node drive.mjs '<json: baseUrl, apiKey, workflows {echo, files, slow, closed, limited}>'
import { SimStudioClient, SimStudioError } from 'simstudio-ts-sdk'

const config = JSON.parse(process.argv[2])
const { echo, files, slow, closed, limited } = config.workflows
const client = new SimStudioClient({ apiKey: config.apiKey, baseUrl: config.baseUrl })
const report = {}

async function attempt(fn) {
  try {
    return { ok: await fn() }
  } catch (error) {
    if (error instanceof SimStudioError) {
      return { error: { message: error.message, code: error.code ?? null, status: error.status ?? null } }
    }
    throw error
  }
}

report.execute = await attempt(() => client.executeWorkflow(echo, { message: 'hello' }))
report.rateLimitAfterExecute = client.getRateLimitInfo()

const pdf = new File([Buffer.from('%PDF-1.4\nquarterly figures')], 'report.pdf', { type: 'application/pdf' })
report.fileExecute = await attempt(() => client.executeWorkflow(files, { documents: [pdf], note: 'Q3' }))

report.asyncAccepted = await attempt(() => client.executeWorkflow(slow, { topic: 'Q3' }, { async: true }))
const taskId = report.asyncAccepted.ok?.taskId
if (taskId) {
  const seen = []
  let job = await client.getJobStatus(taskId)
  for (let i = 0; i < 200 && (job.status === 'queued' || job.status === 'processing'); i++) {
    seen.push(job.status)
    await new Promise((resolve) => setTimeout(resolve, 50))
    job = await client.getJobStatus(taskId)
  }
  report.jobSeen = seen
  report.job = job
}

report.status = await attempt(() => client.getWorkflowStatus(echo))
report.validateReady = await client.validateWorkflow(echo)
report.validateClosed = await client.validateWorkflow(closed)
report.validateUnknown = await client.validateWorkflow('999999999')

report.usage = await attempt(() => client.getUsageLimits())

const stranger = new SimStudioClient({ apiKey: 'not-a-key', baseUrl: config.baseUrl })
report.badKey = await attempt(() => stranger.executeWorkflow(echo, {}))
report.unknownWorkflow = await attempt(() => client.executeWorkflow('999999999', {}))

const limitedRuns = []
for (let i = 0; i < config.limit + 1; i++) {
  limitedRuns.push(await attempt(() => client.executeWorkflow(limited, {})))
}
report.limitedRuns = limitedRuns
report.rateLimitAfter429 = client.getRateLimitInfo()
report.retryGivesUp = await attempt(() => client.executeWithRetry(limited, {}, {}, { maxRetries: 0 }))

process.stdout.write(JSON.stringify(report))
