/**
 * A stand-in bangerd for tests of the CLI's fast paths: a vscode-jsonrpc server (as bangerd is) on a state
 * directory's socket, with the pid and build files that make the CLI take it for a daemon of its own build;
 * and the CLI run from source against it.
 */
import { spawn } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createMessageConnection, SocketMessageReader, SocketMessageWriter, type MessageConnection } from 'vscode-jsonrpc/node.js';
import { scratchDir } from './scratch.js';

export interface FakeDaemon {
  home: string;
  close(): Promise<void>;
}

/** Serves each connection with `serve` (its handlers set, before it listens). */
export async function fakeDaemon(serve: (conn: MessageConnection) => void): Promise<FakeDaemon> {
  const home = scratchDir('banger-fake-daemon-');
  const server = createServer((sock) => {
    const conn = createMessageConnection(new SocketMessageReader(sock), new SocketMessageWriter(sock));
    serve(conn);
    conn.listen();
  });
  await new Promise<void>((r) => server.listen(join(home, 'bangerd.sock'), r));
  await writeFile(join(home, 'bangerd.pid'), `${process.pid}\n`);
  await writeFile(join(home, 'bangerd.build'), `${process.pid} source\n`);
  return {
    home,
    close: async () => {
      await new Promise((r) => server.close(r));
      await rm(home, { recursive: true, force: true });
    },
  };
}

/** `banger ARGS` from source against the state directory `home`, with `input` on its stdin. */
export function runCli(home: string, args: string[], input = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...process.env, BANGER_HOME: home, NO_COLOR: '1' } });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.stdin.end(input);
    p.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}
