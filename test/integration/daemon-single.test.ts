/**
 * One daemon per state directory, as a user meets it: several CLI commands started at the same moment on a
 * fresh BANGER_HOME (no daemon yet) all succeed, and exactly one bangerd serves them and keeps running.
 * Runs the built CLI (dist/banger.js).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { CLI } from '../helpers/cli.js';
import { scratchDir } from '../helpers/scratch.js';

const run = promisify(execFile);

/** Processes whose command line is bangerd's with this BANGER_HOME in their environment. */
function daemonsOf(home: string): number[] {
  const pids: number[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number))
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      if (cmd.includes('bangerd') && env.includes(`BANGER_HOME=${home}`)) pids.push(pid);
    } catch {
      /* gone meanwhile */
    }
  return pids;
}

void describe('one daemon per state directory', () => {
  const home = scratchDir('banger-single-');
  // Its own DNS port: the default (127.77.0.1:53) may belong to another daemon on this host.
  writeFileSync(join(home, 'config.json'), JSON.stringify({ dns: { address: '127.0.0.1', port: 20000 + (process.pid % 20000) } }));
  const env = { ...process.env, BANGER_HOME: home, NO_COLOR: '1' };

  after(async () => {
    await run('node', [CLI, 'daemon', 'stop'], { env }).catch(() => undefined);
    rmSync(home, { recursive: true, force: true });
  });

  void it('four CLIs started at once on a fresh home all succeed, served by one bangerd', async () => {
    const results = await Promise.all([1, 2, 3, 4].map(() => run('node', [CLI, 'vm', 'list', '--json'], { env, timeout: 60_000 })));
    for (const r of results) assert.deepEqual(JSON.parse(r.stdout), []);
    // A daemon that lost the race may still be loading when the CLIs are done; it exits at the lock.
    let pids = daemonsOf(home);
    for (let i = 0; i < 100 && pids.length > 1; i++) {
      await sleep(100);
      pids = daemonsOf(home);
    }
    assert.equal(pids.length, 1, `one bangerd, got pids ${pids.join(', ')}`);
    assert.equal(Number(readFileSync(join(home, 'bangerd.pid'), 'utf8').trim()), pids[0]);
  });

  void it('daemon stop ends a daemon that no longer answers, and the next command is served by a new one', { timeout: 90_000 }, async () => {
    await run('node', [CLI, 'vm', 'list'], { env, timeout: 60_000 });
    const [pid] = daemonsOf(home);
    assert.ok(pid, 'a daemon runs');
    // A stopped process answers nothing, as a daemon whose event loop is stuck does.
    process.kill(pid, 'SIGSTOP');
    try {
      const started = Date.now();
      const r = await run('node', [CLI, 'daemon', 'stop'], { env, timeout: 60_000 });
      const ms = Date.now() - started;
      assert.match(r.stderr, new RegExp(`bangerd \\(pid ${pid}\\) did not answer within 15 s: ending it \\(its VMs keep running\\)`));
      assert.match(r.stderr, /bangerd stopped/);
      assert.ok(ms < 30_000, `daemon stop took ${ms} ms`);
      assert.equal(existsSync(`/proc/${pid}`), false, 'the hung daemon is gone');
    } finally {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        /* ended */
      }
    }
    const again = await run('node', [CLI, 'vm', 'list', '--json'], { env, timeout: 60_000 });
    assert.deepEqual(JSON.parse(again.stdout), []);
    const [next] = daemonsOf(home);
    assert.ok(next !== undefined && next !== pid, `a new daemon serves (was ${pid}, now ${next})`);
  });
});
