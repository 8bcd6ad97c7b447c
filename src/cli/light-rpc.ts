/**
 * The CLI's fast paths (fast-exec.ts, fast-prepare.ts) talk to the daemon without vscode-jsonrpc, commander or
 * zod, which take longer to load than a short command takes to run: plain JSON-RPC 2.0 with Content-Length
 * framing over the daemon's socket, as vscode-jsonrpc speaks it.
 */
import { connect, type Socket } from 'node:net';
import { BangerError, ErrorCode } from '../errors/index.js';
import { fromWire } from '../errors/wire.js';
import { servedByThisBuild } from '../client/daemon-build.js';
import { Paths } from '../shared/paths.js';

/**
 * A minimal JSON-RPC client: requests, their replies, notifications by method, progress by token.
 */
export class LightRpc {
  private buf: Buffer = Buffer.alloc(0);
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: unknown) => void; reject: (e: BangerError) => void }>();
  onNotification: (method: string, params: unknown) => void = () => {};
  private readonly progress = new Map<string, (value: unknown) => void>();

  constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => this.receive(d));
    sock.on('error', () => {});
    sock.on('close', () => {
      for (const p of this.pending.values())
        p.reject(new BangerError(ErrorCode.Unavailable, 'bangerd closed the connection', { hint: 'see `banger daemon logs`' }));
      this.pending.clear();
    });
  }

  /** With `onProgress`, the request carries a progress token and the server's `$/progress` values for it go there. */
  request(method: string, params: object, onProgress?: (value: unknown) => void): { id: number; reply: Promise<unknown> } {
    const id = this.nextId++;
    let token: string | undefined;
    if (onProgress) {
      token = `p${id}`;
      this.progress.set(token, onProgress);
    }
    const reply = new Promise<unknown>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    if (token !== undefined) void reply.finally(() => this.progress.delete(token)).catch(() => undefined);
    this.send({ jsonrpc: '2.0', id, method, params: token === undefined ? params : { ...params, progressToken: token } });
    return { id, reply };
  }

  notify(method: string, params: unknown): void {
    if (!this.sock.destroyed) this.send({ jsonrpc: '2.0', method, params });
  }

  close(): void {
    this.sock.destroy();
  }

  private send(msg: object): void {
    const body = Buffer.from(JSON.stringify(msg), 'utf8');
    this.sock.write(Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`, 'ascii'), body]));
  }

  private receive(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const m = /content-length:\s*(\d+)/i.exec(this.buf.subarray(0, end).toString('ascii'));
      if (!m) {
        this.sock.destroy();
        return;
      }
      const len = Number(m[1]);
      if (this.buf.length < end + 4 + len) return;
      const msg = JSON.parse(this.buf.subarray(end + 4, end + 4 + len).toString('utf8')) as {
        id?: number;
        method?: string;
        params?: unknown;
        result?: unknown;
        error?: { code: number; message: string; data?: unknown };
      };
      this.buf = this.buf.subarray(end + 4 + len);
      if (msg.method === '$/progress') {
        const p = msg.params as { token?: unknown; value?: unknown } | undefined;
        if (typeof p?.token === 'string') this.progress.get(p.token)?.(p.value);
      } else if (msg.method !== undefined) this.onNotification(msg.method, msg.params);
      else if (typeof msg.id === 'number') {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (msg.error) p?.reject(fromWire(msg.error));
        else p?.resolve(msg.result);
      }
    }
  }
}

function connectTo(path: string): Promise<Socket | null> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('error', () => resolve(null));
    s.once('connect', () => resolve(s));
  });
}

/** A client of the running daemon when it is of this build (else null: the full CLI starts or restarts it). */
export async function connectToThisBuild(): Promise<LightRpc | null> {
  const paths = Paths.fromEnv();
  if (!servedByThisBuild(paths)) return null;
  const sock = await connectTo(paths.socket);
  return sock === null ? null : new LightRpc(sock);
}
