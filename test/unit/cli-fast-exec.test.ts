/**
 * `banger vm exec VM -- CMD`'s fast path (no commander, zod or vscode-jsonrpc): which command lines it takes,
 * and that it speaks the daemon's JSON-RPC (a vscode-jsonrpc server here, as bangerd is) with the same
 * output, stdin, errors and exit codes as the full CLI.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ResponseError } from 'vscode-jsonrpc/node.js';
import { parseFastExec } from '../../src/cli/fast-exec.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { toWire } from '../../src/errors/wire.js';
import { fakeDaemon, runCli, type FakeDaemon } from '../helpers/fake-daemon.js';

test('the fast path takes `vm exec [-t] [-w DIR] VM -- CMD...` and nothing else', () => {
  assert.deepEqual(parseFastExec(['vm', 'exec', 'dev', '--', 'true']), { vm: 'dev', argv: ['true'], cwd: undefined, tty: false });
  assert.deepEqual(parseFastExec(['vm', 'exec', '-t', 'dev', '-w', '/tmp', '--', 'ls', '-l']), { vm: 'dev', argv: ['ls', '-l'], cwd: '/tmp', tty: true });
  assert.deepEqual(parseFastExec(['vm', 'exec', 'dev', '--workdir=/x', '--', 'a', '--', 'b']), { vm: 'dev', argv: ['a', '--', 'b'], cwd: '/x', tty: false });
  for (const args of [
    ['vm', 'exec', 'dev', 'true'], // no --: commander's parsing
    ['vm', 'exec', 'dev', '--'],
    ['vm', 'exec', '--help'],
    ['vm', 'exec', 'dev', '--auto-prepare', '--', 'true'],
    ['vm', 'exec', 'a', 'b', '--', 'true'],
    ['vm', 'exec', '-w', '--', 'true'],
    ['vm', 'run', 'dev', '--', 'true'],
  ])
    assert.equal(parseFastExec(args), null, args.join(' '));
});

const seen: { method: string; params: unknown }[] = [];
let daemon: FakeDaemon;
const cli = (args: string[], input: string) => runCli(daemon.home, args, input);

before(async () => {
  daemon = await fakeDaemon((conn) => {
    let stdinDone: () => void = () => {};
    const stdinEnded = new Promise<void>((r) => (stdinDone = r));
    conn.onNotification((method, params) => {
      seen.push({ method, params });
      if (method === 'exec/stdin' && (params as { eof?: boolean }).eof) stdinDone();
    });
    conn.onRequest('vm.show', (p: { name: string }) => {
      if (p.name === 'nope') {
        const w = toWire(new BangerError(ErrorCode.NotFound, "no VM named 'nope'", { hint: 'list VMs with `banger vm list`' }));
        return new ResponseError(w.code, w.message, w.data);
      }
      return { name: p.name, workspace: null };
    });
    conn.onRequest('vm.exec', async (p: { execId: string; argv: string[]; stdin: boolean }) => {
      seen.push({ method: 'vm.exec', params: p });
      const b64 = (s: string) => Buffer.from(s).toString('base64');
      await conn.sendNotification('exec/output', { execId: p.execId, stream: 'stdout', data: b64(`ran ${p.argv.join(' ')}\n`) });
      await conn.sendNotification('exec/output', { execId: p.execId, stream: 'stderr', data: b64('to stderr\n') });
      if (p.stdin) await stdinEnded;
      return { exitCode: 7 };
    });
  });
});
after(() => daemon.close());

test('output, stdin and the exit code go through the daemon as with the full CLI', async () => {
  const r = await cli(['vm', 'exec', 'dev', '--', 'cat', '-n'], 'some input');
  assert.deepEqual(r, { code: 7, stdout: 'ran cat -n\n', stderr: 'to stderr\n' });
  const exec = seen.find((s) => s.method === 'vm.exec')!.params as { name: string; stdin: boolean; tty?: unknown };
  assert.equal(exec.name, 'dev');
  assert.equal(exec.stdin, true);
  assert.equal(exec.tty, undefined);
  const sent = seen.filter((s) => s.method === 'exec/stdin').map((s) => s.params as { data?: string; eof?: boolean });
  assert.equal(Buffer.concat(sent.filter((s) => s.data).map((s) => Buffer.from(s.data!, 'base64'))).toString(), 'some input');
  assert.equal(sent.at(-1)!.eof, true);
});

test("a daemon error is printed with its hint and exits with the error's code", async () => {
  const r = await cli(['vm', 'exec', 'nope', '--', 'true'], '');
  assert.equal(r.code, 65);
  assert.match(r.stderr, /error: no VM named 'nope'\nhint: list VMs with `banger vm list`\n/);
});
