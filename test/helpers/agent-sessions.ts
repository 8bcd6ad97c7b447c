import { join } from 'node:path';
import type { AgentClient, SessionOutputChunk } from '../../src/daemon/guest/agent-client.js';
import type { AgentSessionInfo } from '../../src/protocol/agent-sessions.js';
import { startAgent, type AgentHarness } from './agent-harness.js';
import { scratchDir } from './scratch.js';

/** Unix socket paths are short: session roots live right under /tmp. */
export async function sessionRoot(): Promise<string> {
  return join(scratchDir('bs-', '/tmp'), 's');
}

export async function startSessionAgent(root: string, capBytes?: number): Promise<AgentHarness> {
  return startAgent({ sessions: { root, capBytes } });
}

/** Waits until the session is no longer running (or fails after `ms`). */
export async function waitEnded(c: AgentClient, name: string, ms = 15_000): Promise<AgentSessionInfo> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await c.sessionShow(name);
    if (s.state !== 'running') return s;
    if (Date.now() > deadline) throw new Error(`session ${name} still running after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Reads one stream from `from` to its end (following until the session ends when `follow`). */
export async function readLogs(
  c: AgentClient,
  name: string,
  o: { from?: number | 'start' | 'end'; stream?: 'stdout' | 'stderr'; follow?: boolean } = {},
): Promise<{ data: Buffer; chunks: SessionOutputChunk[] }> {
  const chunks: SessionOutputChunk[] = [];
  const s = await c.sessionLogs({ name, ...o, onOutput: (ch) => void chunks.push(ch) });
  await s.ended;
  return { data: Buffer.concat(chunks.map((ch) => ch.data)), chunks };
}
