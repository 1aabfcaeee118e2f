// Every row of the case table both SDKs follow (sdk/cases.json), with the TypeScript SDK.
// tests/sdk/test_cases.py plays the same rows with the Python SDK.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import * as sdk from '@cxpa/sdk/agent'
import { GatewayError } from '@cxpa/sdk/errors'

import { CASES, createCredential, ended, getRun, pollRun, presetAgent, stack } from './support.js'

const MISSING_AGENT_ID = 2_147_483_000

async function callOnce(c, s, agent, credentialId, run = 0) {
  const baseUrl = c.gateway === 'strict' ? s.strictBaseUrl : s.baseUrl
  const ingestApiKey = { tenant: s.ingestKey, wrong: 'igk_wrong', stranger: s.strangerIngestKey }[c.key ?? 'tenant']
  const agentId = c.agentId === 'missing' ? MISSING_AGENT_ID : agent.id
  const args = { ...c.args }
  if (args.connectionId === 'own') args.connectionId = credentialId
  try {
    if (c.call.startsWith('agentClient.') || c.call === 'getRun') {
      return { result: await clientCall(c, baseUrl, ingestApiKey, agent, args, run) }
    }
    const result = await sdk[c.call]({ baseUrl, ingestApiKey, agentId, ...args })
    if (c.call === 'triggerRunAndDownload') await result.body.cancel()
    return { result }
  } catch (error) {
    if (error instanceof GatewayError) return { error }
    throw error
  }
}

async function clientCall(c, baseUrl, ingestApiKey, agent, args, run) {
  const externalRunId = run ? `${c.name} #${run}` : c.name
  const registered = await sdk.registerRun({ baseUrl, ingestApiKey, agentId: agent.id, externalRunId })
  const client = sdk.createAgentClient({
    baseUrl,
    apiKey: c.apiKey === 'wrong' ? 'agk_wrong' : agent.api_key,
    runId: registered.runId,
    credentialsToken: registered.credentialsToken,
  })
  for (const step of c.before ?? []) {
    assert.equal(step, 'complete')
    await client.complete({ output: { done: true } })
    await pollRun(agent.id, registered.runId, ended)
  }
  if (c.call === 'getRun') {
    // Read-your-writes: each report answered 2xx, then the read at once (no polling).
    for (const report of c.reports) await client[report.call]({ ...report.args })
    return getRun(agent.id, registered.runId)
  }
  const method = c.call.split('.')[1]
  if (method === 'resolveCredential') return client.resolveCredential(args.connectionId)
  return client[method](args)
}

for (const c of CASES.cases) {
  test(c.name, async () => {
    const s = await stack()
    const agent = await presetAgent(c.agent)
    const credentialId = c.args?.connectionId === 'own' ? await createCredential({ token: 't0p' }) : undefined
    for (let i = 0; i < (c.repeat ?? 0); i++) {
      const { error } = await callOnce(c, s, agent, credentialId)
      assert.equal(error, undefined, `the call before the checked one failed: ${error?.message}`)
    }

    for (let run = 0; run < (c.runs ?? 1); run++) {
      const { result, error } = await callOnce(c, s, agent, credentialId, run)
      expectTheCase(c, result, error, run)
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
    else assert.equal(error.retryAfterMs, undefined)
  }
}
