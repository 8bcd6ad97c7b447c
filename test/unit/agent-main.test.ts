import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { readAll } from '../helpers/agent-harness.js';
import { scratchDir } from '../helpers/scratch.js';

const REPO = join(import.meta.dirname, '..', '..');

test('the agent started niced (as run-agent does) runs commands at --priority, without its MALLOC_ tuning', async (t) => {
  const dir = scratchDir('banger-agent-main-');
  const sock = join(dir, 'agent.sock');
  const agent = spawn(
    'nice',
    ['-n', '10', process.execPath, '--import', 'tsx', join(REPO, 'src/agent/main.ts'), '--listen', sock, '--sessions', join(dir, 's'), '--priority', '0'],
    { cwd: REPO, stdio: 'ignore', env: { ...process.env, MALLOC_ARENA_MAX: '1', MALLOC_TRIM_THRESHOLD_: '65536' } },
  );
  t.after(() => {
    agent.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  for (let i = 0; i < 300 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  const client = new AgentClient(
    await new Promise((res, rej) => {
      const s = connect(sock, () => res(s)).once('error', rej);
    }),
  );
  t.after(() => client.close());
  await client.hello();
  // Field 19 of /proc/PID/stat is the nice value.
  const p = await client.exec({ shell: 'echo "$(cut -d" " -f19 /proc/self/stat) ${MALLOC_ARENA_MAX-unset} ${MALLOC_TRIM_THRESHOLD_-unset}"' });
  assert.equal((await readAll(p.stdout)).toString(), '0 unset unset\n');
  assert.equal((await p.exited).code, 0);
});
