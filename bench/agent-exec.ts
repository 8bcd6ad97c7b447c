/**
 * Round trip of `exec true` through the guest agent protocol on the host (agent process on a unix socket,
 * no VM): the protocol's own cost, against spawning `true` directly in this process.
 * Usage: node --import tsx bench/agent-exec.ts [runs]
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient } from '../src/daemon/guest/agent-client.js';
import { REPO, median, report } from './common.js';

const runs = Number(process.argv[2] ?? 100);
const dir = mkdtempSync(join(tmpdir(), 'bench-agent-'));
const sock = join(dir, 'agent.sock');
const agent = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'src/agent/main.ts'), '--listen', sock], {
  stdio: 'ignore',
});
try {
  while (!existsSync(sock)) await new Promise((r) => setTimeout(r, 50));
  const client = new AgentClient(
    await new Promise((res, rej) => {
      const s = connect(sock, () => res(s)).once('error', rej);
    }),
  );
  await client.hello();
  const viaAgent: number[] = [];
  const direct: number[] = [];
  for (let i = 0; i < runs; i++) {
    let t = performance.now();
    const p = await client.exec({ argv: ['true'] });
    p.stdout.resume();
    p.stderr.resume();
    await p.exited;
    viaAgent.push(performance.now() - t);
    t = performance.now();
    await new Promise((r) => spawn('true', { stdio: 'ignore' }).once('close', r));
    direct.push(performance.now() - t);
  }
  client.close();
  report(`agent exec true (${runs} runs)`, viaAgent, direct, 'spawn true in this process');
  process.stdout.write(`  medians: agent ${median(viaAgent).toFixed(2)} ms, direct ${median(direct).toFixed(2)} ms\n`);
} finally {
  agent.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}
