/**
 * vm.exec's reply ends the client's wait (the CLI exits on it), so every output notification must be sent
 * before it, however slowly the connection takes them. Seen on a real VM before the fix: 1 run in 60 of
 * `vm exec VM -- sh -c 'a; b; c'` printed two of its three lines.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MessageConnection } from 'vscode-jsonrpc/node.js';
import { ExecRegistry, execHandlers } from '../../src/daemon/rpc/handlers/exec.js';
import type { VmService } from '../../src/daemon/services/vm/service.js';

test('vm.exec replies only after its last output notification has gone out', async () => {
  const sent: string[] = [];
  const connection = {
    onNotification: () => ({ dispose() {} }),
    // A busy socket: each notification takes a while to be written.
    sendNotification: (_type: unknown, params: { data: string }) =>
      new Promise<void>((r) =>
        setTimeout(() => {
          sent.push(Buffer.from(params.data, 'base64').toString());
          r();
        }, 20),
      ),
  } as unknown as MessageConnection;
  const vms = {
    guest: {
      // The guest process writes three chunks and exits at once: its streams have ended when this resolves.
      exec: async (_name: string, _argv: string[], _cwd: string | undefined, io: { stdout: NodeJS.WritableStream }) => {
        for (const line of ['one\n', 'two\n', 'three\n']) io.stdout.write(Buffer.from(line));
        return 0;
      },
    },
  } as unknown as VmService;
  const execs = new ExecRegistry();
  execs.attach(connection);
  const [h] = execHandlers(vms, execs);
  const reply = await h!.run({ name: 'vm', execId: 'x', argv: ['true'] }, { connection, signal: new AbortController().signal, progress: () => {} });
  assert.deepEqual(reply, { exitCode: 0 });
  assert.deepEqual(sent, ['one\n', 'two\n', 'three\n'], 'every chunk was sent before the reply');
});
