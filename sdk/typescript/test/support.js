// The live gateway stack the Node suite runs against, and the admin calls that set up its cases.
//
// With SDK_STACK set (the JSON line of `python -m tests.support.live_stack`), the stack is the
// one already running; otherwise one is started from the repository root for this test file and
// stopped when the file is done (its standard input is closed).

import { spawn } from 'node:child_process'
import { appendFileSync, readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { after } from 'node:test'

const here = dirname(fileURLToPath(import.meta.url))
export const REPO = resolve(here, '..', '..', '..')
export const CASES = JSON.parse(readFileSync(join(REPO, 'sdk', 'cases.json'), 'utf8'))

let started

// With SDK_REQUESTS_LOG set, every request to an /api/ route is logged as a JSON line (method,
// path, JSON body) so that the gateway's tests can hold them against the OpenAPI document.
if (process.env.SDK_REQUESTS_LOG) {
  const send = globalThis.fetch
  globalThis.fetch = (input, init = {}) => {
    const url = new URL(input instanceof Request ? input.url : String(input))
    if (url.pathname.startsWith('/api/')) {
      let body = null
      try { body = typeof init.body === 'string' ? JSON.parse(init.body) : null } catch { body = null }
      const method = init.method ?? (input instanceof Request ? input.method : 'GET')
      appendFileSync(process.env.SDK_REQUESTS_LOG, JSON.stringify({ method, path: url.pathname, body }) + '\n')
    }
    return send(input, init)
  }
}

/** The stack: `{ baseUrl, strictBaseUrl, runtimeUrl, adminToken, orgId, ingestKey, ... }`. */
export function stack() {
  if (!started) started = process.env.SDK_STACK ? Promise.resolve(JSON.parse(process.env.SDK_STACK)) : launch()
  return started
}

let child

// Registered when the module loads, so it belongs to the test file (registered inside a
// test, it would stop the stack as soon as that first test ends).
after(() => child && child.exitCode === null && new Promise((done) => {
  child.once('exit', done)
  child.stdin.end()
}))

function launch() {
  const python = process.env.GATEWAY_PYTHON || join(REPO, '.venv', 'bin', 'python')
  child = spawn(python, ['-m', 'tests.support.live_stack'], {
    cwd: REPO,
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  return new Promise((ok, fail) => {
    child.once('error', fail)
    child.once('exit', (code) => fail(new Error(`the live stack exited with code ${code}`)))
    createInterface({ input: child.stdout }).once('line', (line) => ok(JSON.parse(line)))
  })
}

async function admin(path, body, method = 'POST') {
  const s = await stack()
  const response = await fetch(s.baseUrl + path, {
    method,
    headers: { Authorization: `Bearer ${s.adminToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body ?? {}),
  })
  const answer = await response.json()
  if (response.status !== (method === 'POST' ? 201 : 200)) throw new Error(`${path}: ${response.status} ${JSON.stringify(answer)}`)
  return answer
}

/** An agent of the tenant's organisation through the admin API: `{ id, api_key, ... }`. */
export async function createAgent(fields) {
  const s = await stack()
  return admin(`/admin/orgs/${s.orgId}/agents`, { name: 'Node SDK agent', ...fields })
}

/** An n8n runtime config for the fake runtime's `/webhook/{path}`. */
export async function webhook(path) {
  const s = await stack()
  return { kind: 'n8n', webhook_url: `${s.runtimeUrl}/webhook/${path}` }
}

/** The agent of one of the case table's presets. */
export async function presetAgent(name) {
  const { webhook: path, ...fields } = CASES.agents[name]
  const runtime = path === 'unreachable'
    ? { kind: 'n8n', webhook_url: 'http://127.0.0.1:9/webhook/none' }
    : await webhook(path)
  return createAgent({ ...fields, runtime })
}

/** A credential of the tenant's organisation; its id. */
export async function createCredential(data, name = 'CRM', type = 'api_key', grantTo = undefined) {
  const s = await stack()
  const id = (await admin(`/admin/orgs/${s.orgId}/credentials`, { name, type, data })).id
  // An agent resolves only the credentials on its grant list (credential_ids).
  if (grantTo) await admin(`/admin/agents/${grantTo.id}`, { credential_ids: [...(grantTo.credential_ids ?? []), id] }, 'PATCH')
  return id
}

/** What the test front before the main gateway does to the requests of a call from now on. */
export async function planFront(plan) {
  const s = await stack()
  const response = await fetch(`${s.frontBaseUrl}/_front/plan`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(plan),
  })
  if (response.status !== 200) throw new Error(`the front refused the plan: ${response.status}`)
}

/** The requests of the planned call that reached the front: `{method, path, idempotencyKey, fault}`. */
export async function seenByFront() {
  const s = await stack()
  return (await fetch(`${s.frontBaseUrl}/_front/seen`)).json()
}

/** The run as `GET /api/agents/{agentId}/runs/{runId}` shows it. */
export async function getRun(agentId, runId) {
  const s = await stack()
  const response = await fetch(`${s.baseUrl}/api/agents/${agentId}/runs/${runId}`, {
    headers: { Authorization: `Bearer ${s.ingestKey}` },
  })
  return response.json()
}

/** Poll the run until `until(run)` holds (bounded: 10 s). */
export async function pollRun(agentId, runId, until) {
  for (let i = 0; i < 200; i++) {
    const run = await getRun(agentId, runId)
    if (until(run)) return run
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`run ${runId} never reached the awaited state`)
}

export const ended = (run) => ['completed', 'failed', 'cancelled'].includes(run.status)
