// triggerRunAndDownload as a Node service uses it: the contract's example, a 100 MB file written
// to disk with flat memory, and a runtime that dies mid-file surfacing as a stream error.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { test } from 'node:test'

import { triggerRunAndDownload } from '@cxpa/sdk/agent'
import { GatewayError } from '@cxpa/sdk/errors'

import { createAgent, ended, pollRun, stack, webhook } from './support.js'

const MB = 1024 * 1024

async function sha256(path) {
  const digest = createHash('sha256')
  for await (const chunk of createReadStream(path)) digest.update(chunk)
  return digest.digest('hex')
}

/**
 * Sample the process's memory every 20 ms while `work` runs: resident size before and at its
 * peak, and the peak of the bytes held in ArrayBuffers (where a buffered body would sit).
 */
async function memoryDuring(work) {
  const before = process.memoryUsage()
  const peak = { rss: before.rss, arrayBuffers: before.arrayBuffers }
  const sample = () => {
    const now = process.memoryUsage()
    peak.rss = Math.max(peak.rss, now.rss)
    peak.arrayBuffers = Math.max(peak.arrayBuffers, now.arrayBuffers)
  }
  const sampler = setInterval(sample, 20)
  try {
    await work()
  } finally {
    clearInterval(sampler)
    sample()
  }
  return { before, peak }
}

test('a 100 MB file is written to disk as printed in the contract, with flat memory', async () => {
  const s = await stack()
  const size = 100 * MB
  const agent = await createAgent({
    output_kind: 'file_download',
    runtime: await webhook(`bytes?size=${size}&filename=report.bin`),
  })
  const folder = await mkdtemp(join(tmpdir(), 'sdk-download-'))
  try {
    let result
    const { before, peak } = await memoryDuring(async () => {
      result = await triggerRunAndDownload({
        baseUrl: s.baseUrl,
        ingestApiKey: s.ingestKey,
        agentId: agent.id,
        input: { topic: 'Q3' },
      })
      // The contract's own line, with the file saved where this test can remove it.
      await writeFile(join(folder, result.filename), Readable.fromWeb(result.body))
    })
    const saved = join(folder, result.filename)
    assert.equal(result.contentLength, size)
    assert.equal((await stat(saved)).size, size)
    assert.equal(await sha256(saved), s.bytesSha256[String(size)])
    const grewMb = (peak.rss - before.rss) / MB
    const heldMb = peak.arrayBuffers / MB
    console.log(`# 100 MB download: Node RSS ${(before.rss / MB).toFixed(1)} MiB before, ` +
      `${(peak.rss / MB).toFixed(1)} MiB peak (+${grewMb.toFixed(1)} MiB); ` +
      `ArrayBuffers peak ${heldMb.toFixed(1)} MiB`)
    // Flat: chunks in flight and garbage not yet collected, never the file (a buffered body
    // would hold 100 MiB here; a 300 MB file measured the same +51 MiB of RSS).
    assert.ok(heldMb < 64, `${heldMb.toFixed(1)} MiB held in buffers for a 100 MB file`)
    assert.ok(grewMb < 100, `RSS grew by ${grewMb.toFixed(1)} MiB for a 100 MB file`)
    const run = await pollRun(agent.id, result.runId, ended)
    assert.equal(run.status, 'completed')
    // The body is consumed: it cannot be read a second time.
    assert.equal(result.body.locked, true)
  } finally {
    await rm(folder, { recursive: true, force: true })
  }
})

test('a runtime dying mid-file is a stream error, never a silently short file', async () => {
  const s = await stack()
  const agent = await createAgent({
    output_kind: 'file_download',
    runtime: await webhook(`bytes?size=${8 * MB}&die_after=${3 * MB}`),
  })
  const folder = await mkdtemp(join(tmpdir(), 'sdk-download-'))
  try {
    const result = await triggerRunAndDownload({
      baseUrl: s.baseUrl,
      ingestApiKey: s.ingestKey,
      agentId: agent.id,
    })
    assert.equal(result.contentLength, 8 * MB)
    await assert.rejects(
      writeFile(join(folder, 'cut.bin'), Readable.fromWeb(result.body)),
      (error) => {
        assert.ok(error instanceof Error)
        if (error instanceof GatewayError) assert.equal(error.runId, result.runId)
        return true
      },
    )
    const run = await pollRun(agent.id, result.runId, ended)
    assert.equal(run.status, 'failed')
  } finally {
    await rm(folder, { recursive: true, force: true })
  }
})
