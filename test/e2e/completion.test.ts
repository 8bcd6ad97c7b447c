/**
 * Shell completion with a real running VM: the bash script made by the built CLI, sourced in bash, offers
 * the running VM (and not a stopped one) to `vm exec`, the stopped one to `vm start`, and the running VM's
 * sessions to `vm session logs VM`. Names come from the shared e2e daemon through `banger __complete`.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { E2E_HOME, banger, bangerOk, e2eSteps } from '../helpers/cli.js';
import { bangerOnPath, bashComplete } from '../helpers/completion.js';

const RUNNING = 'e2e-cmp-running';
const STOPPED = 'e2e-cmp-stopped';
const SESSION = 'cmp-session';
const { step, printConsolesIfFailed } = e2eSteps();
const binDir = bangerOnPath();
const script = join(binDir, 'banger.bash');
const env = { BANGER_HOME: E2E_HOME, PATH: `${binDir}:${process.env.PATH}` };
const complete = (...words: string[]) => bashComplete(script, ['banger', ...words], env);

void describe('shell completion with real VMs', { timeout: 1_500_000 }, () => {
  before(async () => {
    await banger(['vm', 'delete', '--force', RUNNING, STOPPED]);
    await bangerOk(['vm', 'create', '--name', RUNNING, '--start', '--cpus', '1', '--memory', '768M'], 0, { timeoutMs: 900_000 });
    await bangerOk(['vm', 'create', '--name', STOPPED, '--cpus', '1', '--memory', '512M'], 0, { timeoutMs: 900_000 });
    writeFileSync(script, (await bangerOk(['completion', 'bash'])).stdout);
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', RUNNING, STOPPED]);
    rmSync(binDir, { recursive: true, force: true });
  });

  step('vm exec offers the running VM and not the stopped one', async () => {
    const offered = await complete('vm', 'exec', '');
    assert.ok(offered.includes(RUNNING), `offered: ${offered.join(' ')}`);
    assert.ok(!offered.includes(STOPPED), `offered: ${offered.join(' ')}`);
    assert.deepEqual(await complete('vm', 'exec', 'e2e-cmp-'), [RUNNING]);
  });

  step('vm start offers the stopped VM and not the running one; vm show offers both', async () => {
    assert.deepEqual(await complete('vm', 'start', 'e2e-cmp-'), [STOPPED]);
    assert.deepEqual((await complete('vm', 'show', 'e2e-cmp-')).sort(), [RUNNING, STOPPED]);
  });

  step("vm session logs VM offers that VM's sessions", async () => {
    // The guest agent answers a few seconds after boot (Node under TCG).
    const deadline = Date.now() + 120_000;
    while ((await banger(['vm', 'session', 'start', RUNNING, '--name', SESSION, '--', 'sleep', '600'])).code !== 0) {
      if (Date.now() > deadline) throw new Error('the guest agent did not answer');
      await sleep(1000);
    }
    assert.deepEqual(await complete('vm', 'session', 'logs', RUNNING, 'cmp-'), [SESSION]);
  });
});
