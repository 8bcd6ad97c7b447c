/**
 * After an upgrade (or a rebuild of a checkout) the daemon still running is of another build: its protocol
 * may differ from the CLI's. The CLI restarts it when it serves nobody else (VMs outlive the daemon), and
 * says so. "Another build" is made here by copying dist/ and changing the build id baked into the copy.
 * Runs the built CLI (dist/banger.js).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { CLI, REPO_ROOT } from '../helpers/cli.js';
import { scratchDir } from '../helpers/scratch.js';

const run = promisify(execFile);

interface Status {
  pid: number;
  build?: string;
}

void describe('a daemon of another build', () => {
  const home = scratchDir('banger-upgrade-');
  writeFileSync(join(home, 'config.json'), JSON.stringify({ dns: { address: '127.0.0.1', port: 20000 + ((process.pid + 7) % 20000) } }));
  // Inside the checkout, so the copy resolves node_modules like dist/ does.
  const old = mkdtempSync(join(REPO_ROOT, '.test-old-dist-'));
  const env = { ...process.env, BANGER_HOME: home, NO_COLOR: '1' };
  const status = async () => JSON.parse((await run('node', [CLI, 'daemon', 'status', '--json'], { env })).stdout) as Status;

  after(async () => {
    await run('node', [CLI, 'daemon', 'stop'], { env }).catch(() => undefined);
    rmSync(old, { recursive: true, force: true });
    rmSync(home, { recursive: true, force: true });
  });

  void it('is restarted by the next CLI command when idle, with a note', async () => {
    cpSync(join(REPO_ROOT, 'dist'), old, { recursive: true });
    let patched = 0;
    for (const f of readdirSync(old).filter((n) => n.endsWith('.js'))) {
      const text = readFileSync(join(old, f), 'utf8');
      const next = text.replace(/BUILD_ID = true \? "[0-9a-f]{12}"/g, 'BUILD_ID = true ? "0ldb0ldb0ldb"');
      if (next !== text) {
        writeFileSync(join(old, f), next);
        patched++;
      }
    }
    assert.ok(patched > 0, 'the build id was found in the copied bundle');
    const d = spawn('node', [join(old, 'bangerd.js')], { env, detached: true, stdio: 'ignore' });
    d.unref();
    let before: Status | undefined;
    for (let i = 0; i < 100 && !before; i++) {
      await sleep(100);
      before = await status().catch(() => undefined);
    }
    assert.equal(before?.build, '0ldb0ldb0ldb');

    const r = await run('node', [CLI, 'vm', 'list', '--json'], { env });
    assert.deepEqual(JSON.parse(r.stdout), []);
    assert.match(r.stderr, /restarting bangerd: it runs another build of banger \(VMs keep running\)/);
    const after = await status();
    assert.notEqual(after.pid, before.pid);
    assert.notEqual(after.build, '0ldb0ldb0ldb');
    assert.throws(() => process.kill(before.pid, 0), 'the old daemon is gone');
    // The CLI starts bangerd with a small young generation, which keeps its memory flat during long streams.
    const argv = readFileSync(`/proc/${after.pid}/cmdline`, 'utf8').split('\0');
    for (const flag of ['--max-semi-space-size=1', '--optimize-for-size'])
      assert.ok(argv.includes(flag), `${flag} in bangerd's command line: ${argv.join(' ')}`);
    // The new one is of this build: the next command goes straight through.
    const again = await run('node', [CLI, 'vm', 'list', '--json'], { env });
    assert.doesNotMatch(again.stderr, /restarting/);
  });
});
