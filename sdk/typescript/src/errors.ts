/**
 * What the SDK throws when the gateway answers with an error status.
 *
 * `import { GatewayError } from '@cxpa/sdk/errors'`
 */

/** The gateway answered with an error status (4xx or 5xx). */
export class GatewayError extends Error {
  override readonly name = 'GatewayError'
  /** The HTTP status. */
  readonly status: number
  /** The parsed JSON body, or its text when it was not JSON. */
  readonly body: unknown
  /** The run the error is about, when the gateway named one (`runId` in the body). */
  readonly runId: number | undefined
  /**
   * On a 429, how long to wait before trying again, in milliseconds (the body's `retryAfterMs`,
   * else the `Retry-After` header; 1000 when neither says); on a 503, the `Retry-After` header's
   * when it has one. `undefined` otherwise.
   */
  readonly retryAfterMs: number | undefined

  constructor(status: number, body: unknown, retryAfterMs?: number) {
    super(`HTTP ${status}: ${errorText(body)}`)
    this.status = status
    this.body = body
    const runId = isRecord(body) ? body.runId : undefined
    this.runId = typeof runId === 'number' ? runId : undefined
    this.retryAfterMs =
      status === 429 ? (retryAfterMs ?? 1000) : status === 503 ? retryAfterMs : undefined
  }

  /** The gateway's explanation (its `error` text). */
  get reason(): string {
    return errorText(this.body)
  }
}

/** Whether `error` is a {@link GatewayError} with `status` (any status when omitted). */
export function isGatewayError(error: unknown, status?: number): error is GatewayError {
  return error instanceof GatewayError && (status === undefined || error.status === status)
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function errorText(body: unknown): string {
  if (isRecord(body)) {
    const error = body.error
    if (typeof error === 'string') return error
    if (isRecord(error) && typeof error.message === 'string') return error.message
  }
  return (typeof body === 'string' ? body : JSON.stringify(body) ?? '').slice(0, 500)
}

/**
 * A download's body ended before the whole file arrived (the runtime or the connection failed
 * mid-stream). The stream errors with it, so a short file never passes for a whole one.
 */
export class DownloadInterruptedError extends Error {
  override readonly name = 'DownloadInterruptedError'
  /** The run whose file was streaming. */
  readonly runId: number
  /** How many bytes arrived before the end. */
  readonly received: number
  /** How many the gateway announced (`Content-Length`), when it did. */
  readonly expected: number | null

  constructor(runId: number, received: number, expected: number | null, cause?: unknown) {
    const of = expected === null ? '' : ` of ${expected}`
    super(`The download of run ${runId} ended after ${received}${of} bytes`, { cause })
    this.runId = runId
    this.received = received
    this.expected = expected
  }
}
