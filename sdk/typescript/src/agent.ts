/**
 * The agent SDK: `import { triggerRunAndDownload } from '@cxpa/sdk/agent'`.
 *
 * The contract's six exports, and `getRun` and `cancelRun`. Every call takes the gateway's
 * `baseUrl` and a key, and optionally an `AbortSignal`. An error status throws a `GatewayError`
 * (`@cxpa/sdk/errors`) carrying the status, the parsed body, the `runId` when there is one and,
 * on a 429 or 503, `retryAfterMs`. Calls are retried (bounded, `retries: 0` turns it off) after
 * a connection failure when repeating them is safe, and after a 429 or 503, waiting what the
 * gateway's `Retry-After` asks. Only Node's own `fetch` and web streams are used (Node >= 18).
 */

import { DownloadInterruptedError, GatewayError, isGatewayError } from './errors.js'

/** Where the gateway is, and what every call may carry. */
export interface CallOptions {
  /** The gateway's base URL, e.g. `https://agents.example.internal`. */
  baseUrl: string
  /** Aborts the call (and, for a download, its body). */
  signal?: AbortSignal
  /** A `fetch` to use instead of the global one (a proxy-aware one, say). */
  fetch?: typeof fetch
  /**
   * How many times a call is tried again (default 3; 0 turns retrying off): after a 429 or a
   * 503, and after a connection failure when repeating the call is safe (the triggers, which
   * carry an idempotency key, `getRun`, `cancelRun`, `registerRun`, `resolveCredential`).
   */
  retries?: number
  /**
   * The longest pause before a retry, in ms (default 30 000). A `Retry-After` asking for longer
   * is not waited for: its `GatewayError` is thrown at once.
   */
  maxRetryDelayMs?: number
}

/** A call made with an organisation's ingest key. */
export interface IngestOptions extends CallOptions {
  ingestApiKey: string
  agentId: number | string
}

/** What the three trigger calls send. */
export interface TriggerOptions extends IngestOptions {
  /** Merged on top of the agent's saved default input; the caller's values win. */
  input?: Record<string, unknown>
  /** Attribution for the run (a member's id; unknown ones are dropped by the gateway). */
  userId?: string
  /**
   * Sent as `Idempotency-Key`: a repeat with the same key within 24 h answers the same run
   * instead of starting another. Without one, the SDK makes one per call (a random UUID) and
   * sends it on every retry of that call.
   */
  idempotencyKey?: string
}

/** `triggerRun`'s options. */
export interface TriggerRunOptions extends TriggerOptions {}

/** `triggerRunAndWait`'s and `triggerRunAndDownload`'s options. */
export interface TriggerAndWaitOptions extends TriggerOptions {
  /** How long the gateway may wait, in ms (capped by the agent and the platform; default 60 000). */
  timeoutMs?: number
  /**
   * The longest one request is held open waiting for an answer, in ms (default 290 000: under
   * the 300 s Node's `fetch` waits for response headers). A `triggerRunAndWait` with a longer
   * `timeoutMs` starts the run with `POST .../trigger` and reads it (`GET .../runs/{runId}`)
   * until it ends or `timeoutMs` has passed; a `triggerRunAndDownload` asks the gateway for a
   * window no longer than this (a file must start within it).
   */
  maxHoldMs?: number
}

/** `getRun`'s and `cancelRun`'s options. */
export interface RunOptions extends IngestOptions {
  runId: number
}

/** `cancelRun`'s answer. */
export interface CancelledRun {
  runId: number
  status: 'cancelled'
}

/** `triggerRun`'s answer. */
export interface TriggeredRun {
  runId: number
  status: RunStatus
  /** True when an idempotency key named a run that already existed: nothing new started. */
  replayed: boolean
}

export type RunStatus = 'queued' | 'running' | 'waiting' | 'completed' | 'failed' | 'cancelled'

/** A run row, as `triggerRunAndWait` returns it when the run ended in the window. */
export interface Run {
  timedOut: false
  runId: number
  agentId: number
  status: RunStatus
  output_data: Record<string, any> | null
  outputs: number | null
  error: string | null
  duration_ms: number | null
  started_at: string | null
  completed_at: string | null
  created_at: string | null
}

/** The wait window ended first; the run carries on (poll it, or wait for its callback). */
export interface TimedOut {
  timedOut: true
  runId: number
  agentId: number
  status: 'queued' | 'running' | 'waiting'
}

/** A file a run streams back. */
export interface Download {
  runId: number
  /** The runtime's file name, reduced to a bare, safe file name (no folders). */
  filename: string
  contentType: string
  /** The announced size, or `null` on a chunked transfer. */
  contentLength: number | null
  /**
   * The bytes, as they arrive: never buffered, readable once. A body cut short errors the
   * stream (`DownloadInterruptedError`) instead of ending it.
   */
  body: ReadableStream<Uint8Array>
}

/** `registerRun`'s options. */
export interface RegisterRunOptions extends IngestOptions {
  externalRunId: string
}

/** `registerRun`'s answer. */
export interface RegisteredRun {
  runId: number
  credentialsToken: string
  expiresInSeconds: number
}

/** `ingestRun`'s options (standalone agents only). */
export interface IngestRunOptions extends IngestOptions {
  externalRunId: string
  status: RunStatus
  output?: unknown
  outputs?: number
  error?: string | { message: string; name?: string; stack?: string }
}

/** `ingestRun`'s answer: the run the report landed on, and whether it was new. */
export interface IngestedRun {
  runId: number
  status: RunStatus
  created: boolean
}

/** `createAgentClient`'s options: what the run's trigger payload carries. */
export interface AgentClientOptions extends Omit<CallOptions, 'signal'> {
  /** The agent API key (`agentApiKey` in the trigger payload). */
  apiKey: string
  runId: number
  /** Needed by `resolveCredential` (`credentialsToken` in the trigger payload). */
  credentialsToken?: string
}

/** A callback the gateway recorded: the run's status now. */
export interface CallbackAccepted {
  runId: number
  status: RunStatus
}

/** A resolved credential. `data` is secret: never log it. */
export interface Credential {
  id: string
  name: string
  type: string
  data: Record<string, unknown>
}

/** Each method may carry its own `AbortSignal`. */
export interface MethodOptions {
  signal?: AbortSignal
}

/** A runtime's client for one run (`createAgentClient`). */
export interface AgentClient {
  readonly runId: number
  started(options?: MethodOptions): Promise<CallbackAccepted>
  output(report: { output: unknown; outputs?: number } & MethodOptions): Promise<CallbackAccepted>
  complete(report: { output: unknown; outputs?: number } & MethodOptions): Promise<CallbackAccepted>
  fail(report: { message: string; name?: string; stack?: string } & MethodOptions): Promise<CallbackAccepted>
  waiting(
    report: { tokenId: string; description?: string; output?: unknown } & MethodOptions,
  ): Promise<CallbackAccepted>
  resolveCredential(connectionId: string, options?: MethodOptions): Promise<Credential>
}

const ERROR_BODY_LIMIT = 1024 * 1024
/** Under the 300 s Node's `fetch` (undici's `headersTimeout`) waits for response headers. */
const DEFAULT_MAX_HOLD_MS = 290_000
const DEFAULT_RETRIES = 3
const DEFAULT_MAX_RETRY_DELAY_MS = 30_000
const TERMINAL: readonly string[] = ['completed', 'failed', 'cancelled']

/**
 * Start a platform-managed run; answers at once (`POST /api/agents/{agentId}/runs/trigger`).
 * Retry-safe: the call's `Idempotency-Key` (the caller's, or one the SDK makes) goes on every
 * attempt, so a retry after a lost answer replays the same run (`replayed: true`).
 */
export async function triggerRun(options: TriggerRunOptions): Promise<TriggeredRun> {
  return startRun(options, idempotencyKeyOf(options))
}

async function startRun(options: TriggerOptions, key: string): Promise<TriggeredRun> {
  return retrying(options, true, async () => {
    const response = await send(options, 'POST', agentPath(options, 'trigger'), {
      key: options.ingestApiKey,
      json: triggerBody(options),
      headers: { 'Idempotency-Key': key },
    })
    const body = await readJson(response)
    return {
      runId: Number(body.runId),
      status: body.status as RunStatus,
      replayed: response.headers.get('Idempotent-Replayed') === 'true',
    }
  })
}

/**
 * Start a run and wait for its end (`POST /api/agents/{agentId}/runs/trigger-and-wait`): the
 * run when it ended in the window, or `{ timedOut: true, runId, agentId, status }`.
 *
 * A `timeoutMs` longer than `maxHoldMs` (290 s) is not one held request (Node's `fetch` gives up
 * on response headers after 300 s): the run is started with `POST .../trigger` (same key) and
 * read with `GET .../runs/{runId}` until it ends or `timeoutMs` has passed.
 */
export async function triggerRunAndWait(options: TriggerAndWaitOptions): Promise<Run | TimedOut> {
  const key = idempotencyKeyOf(options)
  const maxHoldMs = options.maxHoldMs ?? DEFAULT_MAX_HOLD_MS
  if (options.timeoutMs !== undefined && options.timeoutMs > maxHoldMs) {
    return startThenRead(options, key, options.timeoutMs)
  }
  return retrying(options, true, async () => {
    const response = await send(options, 'POST', agentPath(options, 'trigger-and-wait'), {
      key: options.ingestApiKey,
      json: triggerBody(options, options.timeoutMs),
      headers: { 'Idempotency-Key': key },
    })
    const body = await readJson(response)
    if (response.status === 202 && body.timedOut === true) {
      return {
        timedOut: true,
        runId: Number(body.runId),
        agentId: Number(body.agentId),
        status: body.status as TimedOut['status'],
      }
    }
    return { ...(body as Omit<Run, 'timedOut'>), timedOut: false }
  })
}

/** A long wait: trigger, then read the run (polling, 250 ms growing to 5 s) until its end. */
async function startThenRead(
  options: TriggerAndWaitOptions,
  key: string,
  timeoutMs: number,
): Promise<Run | TimedOut> {
  const deadline = Date.now() + timeoutMs
  const started = await startRun(options, key)
  const runOptions = { ...options, runId: started.runId }
  let pause = 250
  for (;;) {
    const run = await getRun(runOptions)
    if (TERMINAL.includes(run.status)) return run
    const left = deadline - Date.now()
    if (left <= 0) {
      return {
        timedOut: true,
        runId: run.runId,
        agentId: run.agentId,
        status: run.status as TimedOut['status'],
      }
    }
    await sleep(Math.min(pause, left), options.signal)
    pause = Math.min(5_000, pause * 1.5)
  }
}

/**
 * Start a run whose output is a file and stream it back
 * (`POST /api/agents/{agentId}/runs/trigger-and-download`). Consume `body` exactly once.
 * The window asked for is at most `maxHoldMs` (290 s), so that the gateway's 504 (with the
 * `runId`) arrives before Node's `fetch` stops waiting for headers.
 */
export async function triggerRunAndDownload(options: TriggerAndWaitOptions): Promise<Download> {
  const key = idempotencyKeyOf(options)
  const maxHoldMs = options.maxHoldMs ?? DEFAULT_MAX_HOLD_MS
  const timeoutMs = options.timeoutMs === undefined ? undefined : Math.min(options.timeoutMs, maxHoldMs)
  // Retried up to the response's headers; a body that breaks later errors the stream.
  const response = await retrying(options, true, () =>
    send(options, 'POST', agentPath(options, 'trigger-and-download'), {
      key: options.ingestApiKey,
      json: triggerBody(options, timeoutMs),
      headers: { 'Idempotency-Key': key },
    }),
  )
  const runId = Number(response.headers.get('X-Run-Id'))
  const contentLength = parseLength(response.headers.get('Content-Length'))
  // fetch decodes a Content-Encoding, so the announced length then counts other bytes.
  const encoded = (response.headers.get('Content-Encoding') ?? 'identity') !== 'identity'
  const source = response.body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() })
  return {
    runId,
    filename: safeFilename(response.headers.get('Content-Disposition'), runId),
    contentType: response.headers.get('Content-Type') ?? 'application/octet-stream',
    contentLength,
    body: checkedBody(source, runId, encoded ? null : contentLength),
  }
}

/** The run as it is now (`GET /api/agents/{agentId}/runs/{runId}`, the poll target). */
export async function getRun(options: RunOptions): Promise<Run> {
  return retrying(options, true, async () => {
    const response = await send(options, 'GET', runPath(options), { key: options.ingestApiKey })
    const body = await readJson(response)
    return { ...(body as Omit<Run, 'timedOut'>), timedOut: false }
  })
}

/**
 * Cancel a run that has not ended (`POST /api/agents/{agentId}/runs/{runId}/cancel`); a waiter
 * on it answers `cancelled`. A run that has ended is a 409 `GatewayError` (`body.status` says
 * how it ended), except when an earlier attempt of this call was cut off and the run now reads
 * `cancelled`: that attempt did it.
 */
export async function cancelRun(options: RunOptions): Promise<CancelledRun> {
  let cutOff = false
  return retrying(
    options,
    true,
    async () => {
      try {
        const response = await send(options, 'POST', `${runPath(options)}/cancel`, {
          key: options.ingestApiKey,
        })
        const body = await readJson(response)
        return { runId: Number(body.runId), status: 'cancelled' as const }
      } catch (error) {
        const body = error instanceof GatewayError ? (error.body as { status?: unknown }) : null
        if (cutOff && isGatewayError(error, 409) && body?.status === 'cancelled') {
          return { runId: options.runId, status: 'cancelled' as const }
        }
        throw error
      }
    },
    () => {
      cutOff = true
    },
  )
}

/**
 * Register a run the runtime started on its own and get a credentials token for it
 * (`POST /api/agents/{agentId}/runs/register`). The same `externalRunId` again returns the same
 * run with a fresh token.
 */
export async function registerRun(options: RegisterRunOptions): Promise<RegisteredRun> {
  return retrying(options, true, async () => {
    const response = await send(options, 'POST', agentPath(options, 'register'), {
      key: options.ingestApiKey,
      json: { externalRunId: options.externalRunId },
    })
    const body = await readJson(response)
    return {
      runId: Number(body.runId),
      credentialsToken: String(body.credentialsToken),
      expiresInSeconds: Number(body.expiresInSeconds),
    }
  })
}

/**
 * Report a standalone agent's run (`POST /api/agents/{agentId}/runs/ingest`), creating it on
 * first sight. A run that has ended takes no more reports (a 409 `GatewayError`).
 */
export async function ingestRun(options: IngestRunOptions): Promise<IngestedRun> {
  const payload: Record<string, unknown> = {
    externalRunId: options.externalRunId,
    status: options.status,
  }
  if (options.output !== undefined) payload.output = options.output
  if (options.outputs !== undefined) payload.outputs = options.outputs
  if (options.error !== undefined) payload.error = options.error
  // A report is not repeated after a connection failure (a second `completed` is a 409).
  return retrying(options, false, async () => {
    const response = await send(options, 'POST', agentPath(options, 'ingest'), {
      key: options.ingestApiKey,
      json: payload,
    })
    const body = await readJson(response)
    return {
      runId: Number(body.runId),
      status: body.status as RunStatus,
      created: Boolean(body.created),
    }
  })
}

/** A client bound to one run and its agent API key, for use inside a runtime task. */
export function createAgentClient(options: AgentClientOptions): AgentClient {
  const { apiKey, runId, credentialsToken } = options
  const callback = async (json: Record<string, unknown>, signal?: AbortSignal) => {
    const call = { ...options, signal }
    // Like a report: retried after a 429 or 503, not after a connection failure.
    return retrying(call, false, async () => {
      const path = `/api/runs/${encodeURIComponent(runId)}/callback`
      const response = await send(call, 'POST', path, { key: apiKey, json })
      const body = await readJson(response)
      return { runId: Number(body.runId), status: body.status as RunStatus }
    })
  }
  const outputBody = (output: unknown, outputs: number | undefined) => {
    const json: Record<string, unknown> = { type: 'output', output: output ?? null }
    if (outputs !== undefined) json.outputs = outputs
    return json
  }
  return {
    runId,
    started: (o = {}) => callback({ type: 'started' }, o.signal),
    output: ({ output, outputs, signal }) => callback(outputBody(output, outputs), signal),
    complete: ({ output, outputs, signal }) =>
      callback({ ...outputBody(output, outputs), complete: true }, signal),
    fail: ({ message, name, stack, signal }) => {
      const error: Record<string, string> = { message }
      if (name !== undefined) error.name = name
      if (stack !== undefined) error.stack = stack
      return callback({ type: 'output', failed: true, error }, signal)
    },
    waiting: ({ tokenId, description, output, signal }) => {
      const json: Record<string, unknown> = { type: 'waiting', tokenId }
      if (description !== undefined) json.description = description
      if (output !== undefined) json.output = output
      return callback(json, signal)
    },
    resolveCredential: async (connectionId, o = {}) => {
      if (!credentialsToken) {
        throw new TypeError('resolveCredential needs the credentialsToken given to createAgentClient')
      }
      const path = `/api/credentials/${encodeURIComponent(connectionId)}/resolve`
      const call = { ...options, signal: o.signal }
      return retrying(call, true, async () => {
        const response = await send(call, 'GET', path, {
          key: apiKey,
          headers: { 'X-Credentials-Token': credentialsToken },
        })
        const body = await readJson(response)
        return {
          id: String(body.id),
          name: String(body.name),
          type: String(body.type),
          data: body.data as Record<string, unknown>,
        }
      })
    },
  }
}

interface Request {
  key: string
  json?: unknown
  headers?: Record<string, string>
}

/** Send one request; an error status is thrown as a `GatewayError`, a success returned. */
async function send(
  call: CallOptions,
  method: string,
  path: string,
  request: Request,
): Promise<Response> {
  if (!call.baseUrl) throw new TypeError('baseUrl is required')
  const headers: Record<string, string> = {
    Authorization: `Bearer ${request.key}`,
    ...request.headers,
  }
  let body: string | undefined
  if (request.json !== undefined) {
    headers['Content-Type'] = 'application/json'
    body = JSON.stringify(request.json)
  }
  const doFetch = call.fetch ?? fetch
  const init: RequestInit = { method, headers }
  if (body !== undefined) init.body = body
  if (call.signal !== undefined) init.signal = call.signal
  const response = await doFetch(call.baseUrl.replace(/\/+$/, '') + path, init)
  if (response.status >= 400) throw await toError(response)
  return response
}

/**
 * Make `attempt` until it succeeds, retrying what `call.retries` allows: a 429 or 503 (after
 * the `Retry-After` it asks for, when that is within `maxRetryDelayMs`, else exponential
 * backoff with jitter) and, when the call is `safe` to repeat, a connection failure (a
 * `TypeError` from `fetch` or from reading the answer). `onCutOff` hears of each such failure.
 */
async function retrying<T>(
  call: CallOptions,
  safe: boolean,
  attempt: () => Promise<T>,
  onCutOff?: () => void,
): Promise<T> {
  const retries = Math.max(0, Math.floor(call.retries ?? DEFAULT_RETRIES))
  const maxDelay = call.maxRetryDelayMs ?? DEFAULT_MAX_RETRY_DELAY_MS
  for (let tried = 0; ; tried++) {
    let delay: number
    try {
      return await attempt()
    } catch (error) {
      if (tried >= retries || call.signal?.aborted) throw error
      if (error instanceof GatewayError) {
        if (error.status !== 429 && error.status !== 503) throw error
        delay = error.retryAfterMs ?? backoff(tried, maxDelay)
        if (delay > maxDelay) throw error
      } else if (safe && error instanceof TypeError) {
        onCutOff?.()
        delay = backoff(tried, maxDelay)
      } else {
        throw error
      }
    }
    await sleep(delay, call.signal)
  }
}

/** 500 ms doubling per retry, at most `maxDelay`, with half of it random (full attempts spread). */
function backoff(tried: number, maxDelay: number): number {
  const ceiling = Math.min(maxDelay, 500 * 2 ** tried)
  return ceiling / 2 + Math.random() * (ceiling / 2)
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const done = () => {
      signal?.removeEventListener('abort', aborted)
      resolve()
    }
    const timer = setTimeout(done, ms)
    const aborted = () => {
      clearTimeout(timer)
      reject(signal?.reason)
    }
    signal?.addEventListener('abort', aborted, { once: true })
  })
}

/** The caller's idempotency key, or a new random one for this call and its retries. */
function idempotencyKeyOf(options: TriggerOptions): string {
  if (options.idempotencyKey !== undefined) return options.idempotencyKey
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto
  if (crypto?.randomUUID) return crypto.randomUUID()
  // Node 18 without the global Web Crypto: 122 random bits in the UUID v4 layout.
  const hex = Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16))
  hex[12] = '4'
  hex[16] = ((parseInt(hex[16] ?? '0', 16) & 3) | 8).toString(16)
  const h = hex.join('')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

function agentPath(options: IngestOptions, action: string): string {
  return `/api/agents/${encodeURIComponent(options.agentId)}/runs/${action}`
}

function runPath(options: RunOptions): string {
  return `/api/agents/${encodeURIComponent(options.agentId)}/runs/${encodeURIComponent(options.runId)}`
}

function triggerBody(options: TriggerOptions, timeoutMs?: number): Record<string, unknown> {
  const body: Record<string, unknown> = { input: options.input ?? {} }
  if (options.userId !== undefined) body.userId = options.userId
  if (timeoutMs !== undefined) body.timeoutMs = timeoutMs
  return body
}

async function readJson(response: Response): Promise<Record<string, any>> {
  const text = await response.text()
  return text ? (JSON.parse(text) as Record<string, any>) : {}
}

async function toError(response: Response): Promise<GatewayError> {
  const raw = await readBounded(response, ERROR_BODY_LIMIT)
  let body: unknown
  try {
    body = JSON.parse(raw)
  } catch {
    body = raw
  }
  if (response.status === 429) return new GatewayError(429, body, retryAfterMs(response.headers, body))
  if (response.status === 503) {
    return new GatewayError(503, body, retryAfterHeaderMs(response.headers.get('Retry-After')))
  }
  return new GatewayError(response.status, body)
}

/** An error body's text, read to its end or to `limit` bytes (the rest is dropped). */
async function readBounded(response: Response, limit: number): Promise<string> {
  if (!response.body) return ''
  const reader = response.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  try {
    while (size < limit) {
      const { done, value } = await reader.read()
      if (done) break
      chunks.push(value)
      size += value.byteLength
    }
  } finally {
    await reader.cancel().catch(() => undefined)
  }
  const all = new Uint8Array(size)
  let at = 0
  for (const chunk of chunks) {
    all.set(chunk, at)
    at += chunk.byteLength
  }
  return new TextDecoder().decode(all.subarray(0, Math.min(size, limit)))
}

/** The delay a 429 asks for: `retryAfterMs` when given, else `Retry-After`, else 1 s. */
function retryAfterMs(headers: Headers, body: unknown): number {
  const fromBody = (body as { retryAfterMs?: unknown } | null)?.retryAfterMs
  if (typeof fromBody === 'number' && Number.isFinite(fromBody)) return Math.max(0, fromBody)
  return retryAfterHeaderMs(headers.get('Retry-After')) ?? 1000
}

/** A `Retry-After` (seconds, or an HTTP date) in ms from now; `undefined` when absent or bad. */
function retryAfterHeaderMs(value: string | null): number | undefined {
  if (value === null || value.trim() === '') return undefined
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Number(value) * 1000
  const at = Date.parse(value)
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now())
}

function parseLength(value: string | null): number | null {
  return value !== null && /^\d+$/.test(value) ? Number(value) : null
}

/**
 * The body handed on chunk by chunk as the caller reads (a pull stream with no queue of its
 * own), erroring instead of ending when fewer bytes came than announced or the source broke.
 */
function checkedBody(
  source: ReadableStream<Uint8Array>,
  runId: number,
  expected: number | null,
): ReadableStream<Uint8Array> {
  const reader = source.getReader()
  let received = 0
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        let chunk: ReadableStreamReadResult<Uint8Array>
        try {
          chunk = await reader.read()
        } catch (cause) {
          controller.error(new DownloadInterruptedError(runId, received, expected, cause))
          return
        }
        if (chunk.done) {
          if (expected !== null && received !== expected) {
            controller.error(new DownloadInterruptedError(runId, received, expected))
          } else {
            controller.close()
          }
          return
        }
        received += chunk.value.byteLength
        controller.enqueue(chunk.value)
      },
      cancel(reason) {
        return reader.cancel(reason)
      },
    },
    { highWaterMark: 0 },
  )
}

const UNSAFE = /[^A-Za-z0-9._ -]+/g

/** The file name of a Content-Disposition, as a bare name that stays in the folder it is saved to. */
function safeFilename(disposition: string | null, runId: number): string {
  let name: string | undefined
  if (disposition) {
    const extended = /filename\*\s*=\s*([^']*)'[^']*'([^;]+)/i.exec(disposition)
    const plain = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]+))/i.exec(disposition)
    if (extended?.[2]) {
      try {
        name = decodeURIComponent(extended[2].trim())
      } catch {
        name = undefined
      }
    }
    if (name === undefined && plain) name = (plain[1] ?? plain[2] ?? '').replace(/\\(.)/g, '$1').trim()
  }
  const base = (name ?? '').replace(/\\/g, '/').split('/').pop() ?? ''
  const safe = base.replace(UNSAFE, '_').replace(/^[ .]+|[ .]+$/g, '').slice(0, 200)
  return safe || `run-${runId}`
}
