import { test } from 'node:test';
import assert from 'node:assert/strict';
import { untilAborted } from '../../src/daemon/services/vm/live.js';
import { ErrorCode, isBangerError } from '../../src/errors/index.js';

test('a shared connection attempt outlives a waiter that gives up: the other waiter still gets it', async () => {
  let resolveShared!: (v: string) => void;
  const shared = new Promise<string>((r) => (resolveShared = r));
  const quitter = new AbortController();
  const first = untilAborted(shared, quitter.signal, 'cancelled while connecting');
  const second = untilAborted(shared, new AbortController().signal, 'cancelled while connecting');
  quitter.abort();
  await assert.rejects(first, (e: unknown) => isBangerError(e) && e.code === ErrorCode.Cancelled);
  resolveShared('session');
  assert.equal(await second, 'session');
});

test('an already aborted waiter is Cancelled at once; a failure of the attempt reaches every waiter', async () => {
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(untilAborted(new Promise(() => {}), ac.signal, 'x'), (e: unknown) => isBangerError(e) && e.code === ErrorCode.Cancelled);
  const failing = Promise.reject(new Error('host key mismatch'));
  await assert.rejects(untilAborted(failing, new AbortController().signal, 'x'), /host key mismatch/);
  await assert.rejects(untilAborted(failing, undefined, 'x'), /host key mismatch/);
});
