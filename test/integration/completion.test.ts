/**
 * Shell completion against the daemon in-process (temp BANGER_HOME, fake image builds): the bash script made
 * by the built CLI, sourced in bash, asks the running daemon for names through `banger __complete`. VMs here
 * are created but never booted (a running VM needs a real guest: test/e2e/completion.test.ts covers that).
 * Without a daemon, completing a name prints nothing, returns at once and starts no daemon.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerClient } from '../../src/client/client.js';
import { ImageMethods } from '../../src/protocol/image.js';
import { VmMethods } from '../../src/protocol/vm.js';
import { Paths } from '../../src/shared/paths.js';
import { bangerOk } from '../helpers/cli.js';
import { bangerOnPath, bashComplete } from '../helpers/completion.js';
import type { RunningDaemon } from '../../src/daemon/daemon.js';
import { startTestDaemon } from '../helpers/daemon-fixtures.js';
import { scratchDir } from '../helpers/scratch.js';

const home = scratchDir('banger-completion-int-');
const paths = new Paths(home);
const binDir = bangerOnPath();
const script = join(binDir, 'banger.bash');
const env = { BANGER_HOME: home, PATH: `${binDir}:${process.env.PATH}` };
let daemon: RunningDaemon;
let client: BangerClient;

void describe('shell completion with the daemon in-process', () => {
  before(async () => {
    daemon = await startTestDaemon(paths);
    client = await BangerClient.connect(paths.socket);
    await client.call(ImageMethods.build, { name: 'tiny', packages: [] });
    for (const name of ['cmp-one', 'cmp-two']) await client.call(VmMethods.create, { name, image: 'tiny', vmm: 'qemu', accel: 'tcg' });
    writeFileSync(script, (await bangerOk(['completion', 'bash'], 0, { home })).stdout);
  });
  after(async () => {
    client.close();
    await daemon.stop();
    rmSync(home, { recursive: true, force: true });
    rmSync(binDir, { recursive: true, force: true });
  });

  void it('completes command words from the script alone', async () => {
    assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'ex'], env), ['exec']);
    assert.deepEqual(await bashComplete(script, ['banger', 'ima'], env), ['image']);
    assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'create', '--acc'], env), ['--accel']);
  });

  void it("offers the daemon's VMs where a command takes any VM or a stopped one", async () => {
    assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'show', ''], env), ['cmp-one', 'cmp-two']);
    assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'rm', 'cmp-one', 'cmp-t'], env), ['cmp-two']);
    assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'start', 'cmp-'], env), ['cmp-one', 'cmp-two']);
  });

  void it('offers no stopped VM to vm exec and vm stop', async () => {
    assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'exec', ''], env), []);
    assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'stop', ''], env), []);
  });

  void it('offers image names for image commands and --image', async () => {
    assert.deepEqual(await bashComplete(script, ['banger', 'image', 'rm', ''], env), ['tiny']);
    assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'run', '--image', 't'], env), ['tiny']);
  });

  void it('without a daemon: no names, no daemon started, no waiting', async () => {
    const empty = scratchDir('banger-completion-none-');
    try {
      const started = Date.now();
      assert.deepEqual(await bashComplete(script, ['banger', 'vm', 'exec', ''], { ...env, BANGER_HOME: empty }), []);
      assert.deepEqual(await bashComplete(script, ['banger', 'image', 'show', ''], { ...env, BANGER_HOME: empty }), []);
      // Generous for a loaded machine: this guards against a hang or a daemon start, not against slowness.
      assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
      await sleep(300);
      assert.deepEqual(readdirSync(empty), [], 'nothing made in BANGER_HOME: no socket, pid file or log');
      assert.equal(existsSync(join(empty, 'bangerd.sock')), false);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
