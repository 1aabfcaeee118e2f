// Every row of the case table both SDKs follow (sdk/cases.json), with the TypeScript SDK.
// tests/sdk/test_cases.py plays the same rows with the Python SDK.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import * as sdk from '@cxpa/sdk/agent'
import { GatewayError } from '@cxpa/sdk/errors'

import { CASES, createCredential, ended, planFront, pollRun, presetAgent, seenByFront, stack } from './support.js'

const MISSING_AGENT_ID = 2_147_483_000

const ON_A_RUN = ['getRun', 'cancelRun']

/** The case's call once; the `checked` one meets the case's faults and is timed (`tookMs`). */
async function callOnce(c, s, agent, credentialId, run = 0, checked = false) {
  const baseUrl = {
    main: s.baseUrl,
    strict: s.strictBaseUrl,
    brisk: s.briskBaseUrl,
    front: s.frontBaseUrl,
  }[c.gateway ?? 'main']
  const ingestApiKey = { tenant: s.ingestKey, wrong: 'igk_wrong', stranger: s.strangerIngestKey }[c.key ?? 'tenant']
  const agentId = c.agentId === 'missing' ? MISSING_AGENT_ID : agent.id
  const args = { ...c.args }
  if (args.connectionId === 'own') args.connectionId = credentialId
  if (checked) await planFront({ call: c.call, faults: c.faults ?? [], holdLimitMs: c.holdLimitMs ?? null })
  const started = performance.now()
  try {
    if (c.call.startsWith('agentClient.') || ON_A_RUN.includes(c.call)) {
      return { result: await clientCall(c, s, baseUrl, ingestApiKey, agent, args, run) }
    }
    const result = await sdk[c.call]({ baseUrl, ingestApiKey, agentId, ...args })
    if (c.call === 'triggerRunAndDownload') await result.body.cancel()
    return { result }
  } catch (error) {
    if (error instanceof GatewayError) return { error }
    throw error
  } finally {
    s.tookMs = performance.now() - started
  }
}

async function clientCall(c, s, baseUrl, ingestApiKey, agent, args, run) {
  // The run, its reports and the polls go to the main gateway with the tenant's key; the
  // case's call to the case's gateway with the case's key.
  const main = { baseUrl: s.baseUrl, ingestApiKey: s.ingestKey, agentId: agent.id }
  const externalRunId = run ? `${c.name} #${run}` : c.name
  const registered = await sdk.registerRun({ ...main, externalRunId })
  const clientOptions = {
    baseUrl: s.baseUrl,
    apiKey: c.apiKey === 'wrong' ? 'agk_wrong' : agent.api_key,
    runId: registered.runId,
    credentialsToken: registered.credentialsToken,
  }
  const reporter = sdk.createAgentClient(clientOptions)
  for (const step of c.before ?? []) {
    assert.equal(step, 'complete')
    await reporter.complete({ output: { done: true } })
    await pollRun(agent.id, registered.runId, ended)
  }
  // Read-your-writes: each report answered 2xx, then the call at once (no polling).
  for (const report of c.reports ?? []) await reporter[report.call]({ ...report.args })
  if (ON_A_RUN.includes(c.call)) {
    return sdk[c.call]({ baseUrl, ingestApiKey, agentId: agent.id, runId: registered.runId, ...args })
  }
  const client = sdk.createAgentClient({ ...clientOptions, baseUrl })
  const method = c.call.split('.')[1]
  if (method === 'resolveCredential') return client.resolveCredential(args.connectionId)
  return client[method](args)
}

for (const c of CASES.cases) {
  test(c.name, async () => {
    const s = await stack()
    const agent = await presetAgent(c.agent)
    const credentialId = c.args?.connectionId === 'own' ? await createCredential({ token: 't0p' }, 'CRM', 'api_key', agent) : undefined
    for (let i = 0; i < (c.repeat ?? 0); i++) {
      const { error } = await callOnce(c, s, agent, credentialId)
      assert.equal(error, undefined, `the call before the checked one failed: ${error?.message}`)
    }

    for (let run = 0; run < (c.runs ?? 1); run++) {
      const { result, error } = await callOnce(c, s, agent, credentialId, run, true)
      expectTheCase(c, result, error, run)
      await expectWhatWasSent(c, s)
    }
  })
}

function expectTheCase(c, result, error, run) {
  if ('ok' in c.expect) {
    assert.equal(error, undefined, `expected success, got ${error?.message}`)
    const picked = Object.fromEntries(Object.keys(c.expect.ok).map((k) => [k, result[k]]))
    assert.deepEqual(picked, c.expect.ok, `run ${run + 1} of ${c.runs ?? 1}: ${JSON.stringify(picked)}`)
  } else {
    assert.ok(error, `expected HTTP ${c.expect.status}, got ${JSON.stringify(result)}`)
    assert.equal(error.status, c.expect.status, JSON.stringify(error.body))
    assert.ok(error.reason.includes(c.expect.error ?? ''), error.reason)
    assert.equal(error.runId !== undefined, c.expect.runId, JSON.stringify(error.body))
    if (c.expect.status === 429) assert.ok(error.retryAfterMs > 0)
    else if (c.expect.status !== 503) assert.equal(error.retryAfterMs, undefined)
  }
}

/** The case's `expect.sent` (what reached the front) and `expect.atLeastMs` hold. */
async function expectWhatWasSent(c, s) {
  assert.ok(s.tookMs >= (c.expect.atLeastMs ?? 0), `the call took ${s.tookMs.toFixed(0)} ms`)
  const sent = c.expect.sent
  if (!sent) return
  const seen = await seenByFront()
  assert.equal(seen.length, sent.attempts, JSON.stringify(seen))
  if ('idempotencyKey' in sent) {
    const keys = new Set(seen.map((request) => request.idempotencyKey))
    assert.equal(keys.size, 1, JSON.stringify(seen))
    assert.ok(!keys.has(null), JSON.stringify(seen))
    if (sent.idempotencyKey !== 'same') assert.deepEqual([...keys], [sent.idempotencyKey])
  }
}
