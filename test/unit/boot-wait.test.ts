import assert from 'node:assert/strict';
import { appendFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { ProgressEvent } from '../../src/protocol/common.js';
import { waitForGuestReady } from '../../src/daemon/services/vm/boot.js';
import { READY_MARKER } from '../../src/daemon/guest/init/contract.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { scratchDir } from '../helpers/scratch.js';

function fakeBoot(consoleLog: string, deadlineMs: number) {
  const events: ProgressEvent[] = [];
  const boot = {
    vm: { id: 'vm1', name: 'v' },
    vp: { consoleLog },
    driver: { isAlive: () => Promise.resolve(true) },
    live: { handle: { pid: 1 } },
    deadline: Date.now() + deadlineMs,
    progress: (ev: ProgressEvent) => events.push(ev),
  } as unknown as Parameters<typeof waitForGuestReady>[0];
  return { boot, events };
}

/** Runs `fn` with the path of a console log holding `initial`, in a directory removed afterwards. */
async function withConsoleLog(initial: string, fn: (log: string) => Promise<void>): Promise<void> {
  const dir = scratchDir('banger-bootwait-');
  try {
    const log = join(dir, 'console.log');
    writeFileSync(log, initial);
    await fn(log);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

void test('a guest that prints nothing is started again once, with a notice, and then boots', () =>
  withConsoleLog('', async (log) => {
    const { boot, events } = fakeBoot(log, 10_000);
    let relaunches = 0;
    const rest = await waitForGuestReady(boot, {
      silentMs: 300,
      relaunch: () => {
        relaunches++;
        setTimeout(() => appendFileSync(log, `[0.6] kernel\n${READY_MARKER} agent\n`), 200);
        return Promise.resolve();
      },
    });
    assert.equal(rest, ' agent');
    assert.equal(relaunches, 1);
    assert.deepEqual(
      events.map((e) => e.kind === 'notice' && e.message),
      ['the guest printed nothing for 0 s (an early-boot stall); starting its VMM again, once'],
    );
  }));

void test('a guest that has printed something is never restarted; a second silence ends the boot clearly', () =>
  withConsoleLog('Linux booting\nstuck in sysinit\n', async (log) => {
    const slow = fakeBoot(log, 1000);
    let relaunches = 0;
    const relaunch = () => {
      relaunches++;
      return Promise.resolve();
    };
    const e1 = (await waitForGuestReady(slow.boot, { silentMs: 100, relaunch }).catch(
      (e: unknown) => e,
    )) as BangerError;
    assert.equal(relaunches, 0, 'output arrived, so no relaunch');
    assert.equal(e1.code, ErrorCode.DeadlineExceeded);
    assert.match(
      e1.message,
      /did not finish booting .*its console ended with:\n {2}\| Linux booting\n {2}\| stuck in sysinit$/,
    );

    writeFileSync(log, '');
    const silent = fakeBoot(log, 1500);
    const e2 = (await waitForGuestReady(silent.boot, { silentMs: 100, relaunch }).catch(
      (e: unknown) => e,
    )) as BangerError;
    assert.ok(e2 instanceof BangerError);
    assert.equal(relaunches, 1, 'one relaunch, not a loop');
    assert.equal(e2.code, ErrorCode.DeadlineExceeded);
    assert.match(e2.message, /its console is empty \(the guest printed nothing\)$/);
  }));

void test('a guest that stalls just after its first kernel lines is started again once too (twice the silence)', () =>
  withConsoleLog('[    0.491988] PCI: Fatal: No config space access function found\n', async (log) => {
    const { boot, events } = fakeBoot(log, 10_000);
    let relaunches = 0;
    const t0 = Date.now();
    const rest = await waitForGuestReady(boot, {
      silentMs: 150,
      relaunch: () => {
        relaunches++;
        writeFileSync(log, '');
        setTimeout(
          () => appendFileSync(log, `[0.6] kernel\nServer listening on 0.0.0.0 port 22.\n${READY_MARKER}\n`),
          100,
        );
        return Promise.resolve();
      },
    });
    assert.equal(rest, '');
    assert.equal(relaunches, 1);
    assert.ok(Date.now() - t0 >= 300, 'not before twice the silence');
    assert.deepEqual(
      events.map((e) => e.kind === 'notice' && e.message),
      [
        'the guest printed nothing after its first kernel lines for 0 s (an early-boot stall); starting its VMM again, once',
      ],
    );
  }));

void test('a guest whose kernel reports a lockup before its init starts is started again once, with the report', () =>
  withConsoleLog('[    6.100000] alg: self-tests for sha256 passed\n', async (log) => {
    const { boot, events } = fakeBoot(log, 10_000);
    const whys: string[] = [];
    // The kernel keeps printing (the reports repeat), so no silence ever passes: the report itself decides.
    const timer = setInterval(
      () =>
        appendFileSync(log, '[   84.216687] watchdog: BUG: soft lockup - CPU#0 stuck for 78s! [cryptomgr_test:48]\n'),
      50,
    );
    try {
      const rest = await waitForGuestReady(boot, {
        silentMs: 60_000,
        relaunch: (why) => {
          whys.push(why);
          clearInterval(timer);
          writeFileSync(log, '');
          setTimeout(
            () => appendFileSync(log, `[0.6] kernel\nServer listening on 0.0.0.0 port 22.\n${READY_MARKER} agent\n`),
            100,
          );
          return Promise.resolve();
        },
      });
      assert.equal(rest, ' agent');
    } finally {
      clearInterval(timer);
    }
    const expected =
      "the guest's kernel reported a stall before its init started (watchdog: BUG: soft lockup - CPU#0 stuck for 78s! [cryptomgr_test:48])";
    assert.deepEqual(whys, [expected]);
    assert.deepEqual(
      events.map((e) => e.kind === 'notice' && e.message),
      [`${expected} (an early-boot stall); starting its VMM again, once`],
    );
  }));

void test("a lockup report after the guest's init has printed is not a boot stall: the boot waits on", () =>
  withConsoleLog(
    '[    1.0] kernel\nStarting sshd\n[   40.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [git:480]\n',
    async (log) => {
      const { boot } = fakeBoot(log, 10_000);
      let relaunches = 0;
      setTimeout(() => appendFileSync(log, `${READY_MARKER}\n`), 300);
      const rest = await waitForGuestReady(boot, {
        silentMs: 60_000,
        relaunch: () => {
          relaunches++;
          return Promise.resolve();
        },
      });
      assert.equal(rest, '');
      assert.equal(relaunches, 0);
    },
  ));
