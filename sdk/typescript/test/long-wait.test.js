// triggerRunAndWait waits as long as the API allows (timeoutMs up to 600 000) with Node's
// defaults, although Node's fetch gives up on response headers after 300 s (undici's
// headersTimeout: `TypeError: fetch failed`, cause UND_ERR_HEADERS_TIMEOUT). The clock is
// shortened, not slept through: a fetch that gives up after 300 ms stands for Node's, and
// maxHoldMs 290 for the SDK's default 290 000.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { triggerRunAndWait } from '@cxpa/sdk/agent'

import { createAgent, stack, webhook } from './support.js'

const HEADERS_TIMEOUT_MS = 300

/** Node's fetch with its headers timeout shortened to `ms`: the same error, sooner. */
function fetchGivingUpAfter(ms) {
  return async (url, init = {}) => {
    const controller = new AbortController()
    const timer = setTimeout(() => controller.abort(), ms)
    try {
      return await fetch(url, { ...init, signal: controller.signal })
    } catch (error) {
      if (!controller.signal.aborted) throw error
      const cause = Object.assign(new Error('Headers Timeout Error'), { code: 'UND_ERR_HEADERS_TIMEOUT' })
      throw new TypeError('fetch failed', { cause })
    } finally {
      clearTimeout(timer) // the headers came: the body may take its time
    }
  }
}

/** Node's fetch, noting each request's method, path and Idempotency-Key. */
function recordingFetch(sent) {
  return (url, init = {}) => {
    sent.push({
      method: init.method ?? 'GET',
      path: new URL(url).pathname,
      key: init.headers?.['Idempotency-Key'] ?? null,
    })
    return fetch(url, init)
  }
}

/** An agent whose runtime answers 202, then reports started, output and complete 500 ms apart. */
async function reportingAgent() {
  return createAgent({ output_kind: 'json', runtime: await webhook('accepted?report_delay_ms=500') })
}

test('a call held past the headers timeout fails: what the SDK must not do', async () => {
  const s = await stack()
  const agent = await reportingAgent()
  const began = performance.now()
  await assert.rejects(
    triggerRunAndWait({
      baseUrl: s.baseUrl,
      ingestApiKey: s.ingestKey,
      agentId: agent.id,
      timeoutMs: 5_000,
      maxHoldMs: 10_000, // one request held for the whole wait
      retries: 0,
      fetch: fetchGivingUpAfter(HEADERS_TIMEOUT_MS),
    }),
    (error) => error instanceof TypeError && error.cause?.code === 'UND_ERR_HEADERS_TIMEOUT',
  )
  assert.ok(performance.now() - began < 5_000)
})

test('a wait longer than the headers timeout ends with the run, held no request that long', async () => {
  const s = await stack()
  const agent = await reportingAgent()
  const sent = []
  const record = recordingFetch(sent)
  const giveUp = fetchGivingUpAfter(HEADERS_TIMEOUT_MS)
  const began = performance.now()
  const result = await triggerRunAndWait({
    baseUrl: s.baseUrl,
    ingestApiKey: s.ingestKey,
    agentId: agent.id,
    input: { result: { pages: 3 } },
    timeoutMs: 20_000,
    maxHoldMs: HEADERS_TIMEOUT_MS - 10,
    fetch: (url, init) => {
      record(url, init)
      return giveUp(url, init)
    },
  })
  const tookMs = performance.now() - began
  assert.equal(result.timedOut, false)
  assert.equal(result.status, 'completed')
  assert.deepEqual(result.output_data, { pages: 3 })
  assert.ok(tookMs > 3 * HEADERS_TIMEOUT_MS, `${tookMs} ms`)
  assert.equal(sent[0].path, `/api/agents/${agent.id}/runs/trigger`)
  assert.ok(sent[0].key, 'the trigger carries an Idempotency-Key')
  assert.ok(sent.slice(1).every((r) => r.method === 'GET' && r.path.endsWith(`/runs/${result.runId}`)))
  console.log(`# a wait of ${tookMs.toFixed(0)} ms behind a ${HEADERS_TIMEOUT_MS} ms headers timeout: ` +
    `1 trigger and ${sent.length - 1} reads`)
})

test("with Node's defaults, timeoutMs 600 000 triggers then reads; 290 000 is one held call", async () => {
  const s = await stack()
  const agent = await createAgent({ output_kind: 'json', runtime: await webhook('json') })
  const call = { baseUrl: s.baseUrl, ingestApiKey: s.ingestKey, agentId: agent.id }

  const long = []
  const ended = await triggerRunAndWait({ ...call, timeoutMs: 600_000, fetch: recordingFetch(long) })
  assert.equal(ended.status, 'completed')
  assert.equal(long[0].method, 'POST')
  assert.equal(long[0].path, `/api/agents/${agent.id}/runs/trigger`)
  assert.ok(long.length >= 2 && long.slice(1).every((r) => r.method === 'GET'))

  const short = []
  const held = await triggerRunAndWait({ ...call, timeoutMs: 290_000, fetch: recordingFetch(short) })
  assert.equal(held.status, 'completed')
  assert.deepEqual(short.map((r) => r.path), [`/api/agents/${agent.id}/runs/trigger-and-wait`])
  assert.match(short[0].key, /^[0-9a-f-]{36}$/)
})
