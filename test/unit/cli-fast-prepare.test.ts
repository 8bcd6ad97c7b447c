/**
 * `banger vm workspace prepare VM REPO`'s fast path (no commander, zod or vscode-jsonrpc): which command lines it
 * takes, and that it speaks the daemon's JSON-RPC (a vscode-jsonrpc server here, as bangerd is), progress
 * included, with the same output, errors and exit codes as the full CLI.
 */
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { ResponseError } from 'vscode-jsonrpc/node.js';
import { parseFastPrepare } from '../../src/cli/fast-prepare.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { toWire } from '../../src/errors/wire.js';
import { progressType } from '../../src/protocol/common.js';
import { fakeDaemon, runCli, type FakeDaemon } from '../helpers/fake-daemon.js';

test('the fast path takes `vm workspace prepare VM REPO` with the flags it knows, and nothing else', () => {
  const base = { guestPath: undefined, includeUntracked: false, force: false, full: false };
  assert.deepEqual(parseFastPrepare(['vm', 'workspace', 'prepare', 'dev', '.']), { vm: 'dev', repo: '.', ...base });
  assert.deepEqual(parseFastPrepare(['vm', 'workspace', 'prepare', '--guest-path', '/w', 'dev', 'r', '--full']), {
    vm: 'dev',
    repo: 'r',
    ...base,
    guestPath: '/w',
    full: true,
  });
  assert.deepEqual(parseFastPrepare(['vm', 'workspace', 'prepare', 'dev', 'r', '--guest-path=/a b', '--include-untracked', '--force']), {
    vm: 'dev',
    repo: 'r',
    guestPath: '/a b',
    includeUntracked: true,
    force: true,
    full: false,
  });
  for (const args of [
    ['vm', 'workspace', 'prepare', 'dev'],
    ['vm', 'workspace', 'prepare', 'dev', 'r', 'extra'],
    ['vm', 'workspace', 'prepare', 'dev', 'r', '--json'],
    ['vm', 'workspace', 'prepare', 'dev', 'r', '--dry-run'],
    ['vm', 'workspace', 'prepare', '--help'],
    ['vm', 'workspace', 'prepare', 'dev', 'r', '--guest-path'],
    ['vm', 'workspace', 'prepare', 'dev', 'r', '--guest-path='],
    ['vm', 'workspace', 'prepare', 'dev', 'r', '--guest-path', '/a', '--guest-path', '/b'],
    ['vm', 'workspace', 'export', 'dev'],
  ])
    assert.equal(parseFastPrepare(args), null, args.join(' '));
});

const seen: unknown[] = [];
let daemon: FakeDaemon;
const cli = (args: string[]) => runCli(daemon.home, args);

before(async () => {
  daemon = await fakeDaemon((conn) => {
    conn.onRequest('vm.workspace.prepare', async (p: { name: string; sourcePath: string; guestPath?: string; progressToken?: string }) => {
      seen.push(p);
      if (p.name === 'nope') {
        const w = toWire(new BangerError(ErrorCode.NotFound, "no VM named 'nope'", { hint: 'list VMs with `banger vm list`' }));
        return new ResponseError(w.code, w.message, w.data);
      }
      await conn.sendProgress(progressType, p.progressToken!, { kind: 'notice', message: 're-sync: 1 file changed' });
      return {
        vm: p.name,
        mode: 'resync',
        files: 1,
        bytes: 2048,
        deleted: 0,
        notices: ['a notice'],
        workspace: { sourcePath: p.sourcePath, guestPath: p.guestPath ?? '/root/r', headCommit: 'abcdef0123456789', baseCommit: 'b', includeUntracked: false, preparedAt: 't' },
      };
    });
  });
});
after(() => daemon.close());

test('progress, notices and the result line come as from the full CLI', async () => {
  const r = await cli(['vm', 'workspace', 'prepare', 'dev', 'some repo', '--guest-path', '/root/w', '--full']);
  assert.equal(r.code, 0);
  assert.equal(r.stdout, '');
  assert.equal(
    r.stderr,
    `note: re-sync: 1 file changed\na notice\nre-synced ${resolve('some repo')} into dev:/root/w (1 file written, 2.0 KiB, 0 deleted, at abcdef012345)\n`,
  );
  const p = seen.at(-1) as Record<string, unknown>;
  assert.equal(p.sourcePath, resolve('some repo'), 'the checkout path is resolved here');
  assert.equal(p.full, true);
  assert.equal(p.force, undefined);
});

test("a daemon error is printed with its hint and exits with the error's code", async () => {
  const r = await cli(['vm', 'workspace', 'prepare', 'nope', '.']);
  assert.equal(r.code, 65);
  assert.equal(r.stderr, "error: no VM named 'nope'\nhint: list VMs with `banger vm list`\n");
});
