import { rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { AgentServer, type AgentServerOptions } from '../../src/agent/server.js';
import { AgentClient, type AgentClientOptions } from '../../src/daemon/guest/agent-client.js';
import { AGENT_SYNC } from '../../src/protocol/agent.js';
import { encodeFrame } from '../../src/protocol/agent-frames.js';
import { scratchDir } from './scratch.js';

/** An in-process agent listening on a unix socket in a temporary directory. */
export interface AgentHarness {
  dir: string;
  path: string;
  /** Connections the agent has finished serving. */
  served: () => number;
  client(opts?: AgentClientOptions): Promise<AgentClient>;
  raw(): Promise<Socket>;
  close(): Promise<void>;
}

export async function startAgent(opts: Partial<AgentServerOptions> = {}): Promise<AgentHarness> {
  const dir = scratchDir('banger-agent-');
  const path = join(dir, 'agent.sock');
  const server = new AgentServer({ agentVersion: 'test', python: 'python3', ...opts });
  let served = 0;
  const sockets = new Set<Socket>();
  const net: Server = createServer((sock) => {
    sockets.add(sock);
    void server.serve(sock).then(() => {
      served++;
      sockets.delete(sock);
    });
  });
  await new Promise<void>((r) => net.listen(path, r));
  const clients: AgentClient[] = [];
  return {
    dir,
    path,
    served: () => served,
    client: async (o) => {
      const c = new AgentClient(await raw(path), o);
      clients.push(c);
      return c;
    },
    raw: () => raw(path),
    close: async () => {
      for (const c of clients) c.close();
      for (const s of sockets) s.destroy();
      await new Promise((r) => net.close(r));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export function raw(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => resolve(s)).once('error', reject);
  });
}

/** A greeting followed by one control frame, as a hostile or hand-rolled peer would send it. */
export function controlBytes(message: object, greet = true): Buffer {
  const frame = encodeFrame(0, 0, Buffer.from(JSON.stringify(message)));
  return greet ? Buffer.concat([AGENT_SYNC, frame]) : frame;
}

export async function readAll(r: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Resolves once `sock` has closed (or fails the test after `ms`). */
export function closedWithin(sock: Socket, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (sock.destroyed) return resolve();
    sock.resume(); // a paused socket never sees the end of the stream
    const t = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
    sock.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}
