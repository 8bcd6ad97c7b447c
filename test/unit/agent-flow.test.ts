import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { raw } from '../helpers/agent-harness.js';
import { scratchDir } from '../helpers/scratch.js';

const MiB = 1024 * 1024;
let dir: string;
let agent: ChildProcess;
let client: AgentClient;

before(async () => {
  dir = scratchDir('banger-agent-flow-');
  const sock = join(dir, 'agent.sock');
  // The real entry point in its own process, so its memory is measured apart from the daemon side's.
  agent = spawn(process.execPath, ['--import', 'tsx', 'src/agent/main.ts', '--listen', sock], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const deadline = Date.now() + 20_000;
  while (!existsSync(sock)) {
    if (Date.now() > deadline) throw new Error('the agent did not start listening');
    await new Promise((r) => setTimeout(r, 50));
  }
  client = new AgentClient(await raw(sock));
  await client.hello();
});
after(async () => {
  client?.close();
  agent?.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

test('256 MiB of output to a slow reader keeps memory bounded on both ends', { timeout: 120_000 }, async () => {
  const baseAgent = (await client.stats()).agent;
  const baseHost = process.memoryUsage().arrayBuffers;
  const p = await client.exec({ argv: ['head', '-c', String(256 * MiB), '/dev/zero'] });
  let got = 0;
  // Slow phase: a reader taking 64 KiB every 20 ms while the process could write gigabytes a second.
  const slowUntil = Date.now() + 1500;
  while (Date.now() < slowUntil) {
    await new Promise((r) => setTimeout(r, 20));
    const chunk = p.stdout.read(64 * 1024) as Buffer | null;
    if (chunk) got += chunk.length;
  }
  const midAgent = (await client.stats()).agent;
  const midHost = process.memoryUsage().arrayBuffers;
  assert.ok(got < 32 * MiB, `the slow reader got ${got} bytes`);
  assert.ok(
    midAgent.arrayBuffersBytes - baseAgent.arrayBuffersBytes < 16 * MiB,
    `agent buffers grew to ${midAgent.arrayBuffersBytes}`,
  );
  assert.ok(midAgent.rssBytes - baseAgent.rssBytes < 64 * MiB, `agent rss grew to ${midAgent.rssBytes}`);
  assert.ok(midHost - baseHost < 16 * MiB, `daemon-side buffers grew by ${midHost - baseHost}`);
  // Then drain at full speed: everything arrives.
  for await (const chunk of p.stdout) got += (chunk as Buffer).length;
  assert.equal(got, 256 * MiB);
  assert.deepEqual(await p.exited, { code: 0, signal: null });
});
