import ssh2, { type ClientChannel } from 'ssh2';
const { Client } = ssh2;
type Client = InstanceType<typeof Client>;
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../../errors/index.js';
import {
  MAX_COLLECTED_BYTES,
  OutputCollector,
  type GuestExecOptions,
  type GuestExecResult,
  type GuestSession,
} from './session.js';
import { shellStatus } from '../../shared/command.js';

export interface SshTarget {
  host: string;
  port: number;
  username: string;
  privateKey: string;
  /** The guest's pinned host public key, OpenSSH one-line format ("ssh-ed25519 AAAA... comment"). */
  hostPublicKey: string;
}

/** The raw key blob of an OpenSSH one-line public key: what ssh2's hostVerifier receives. */
export function publicKeyBlob(openSshLine: string): Buffer {
  const b64 = openSshLine.trim().split(/\s+/)[1];
  if (!b64) throw new BangerError(ErrorCode.Internal, 'malformed pinned host key');
  return Buffer.from(b64, 'base64');
}

/**
 * One ssh2 connection to a guest, kept open while the VM runs; every exec is a channel on it.
 * The host key is verified against the key pinned at VM creation: a mismatch fails the connection.
 */
export class SshGuestSession implements GuestSession {
  private closed = false;

  private constructor(private readonly client: Client) {
    client.on('close', () => (this.closed = true));
    client.on('error', () => (this.closed = true));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Calls `fn` once when the connection drops (guest shutdown, network loss). */
  onClose(fn: () => void): void {
    if (this.closed) fn();
    else this.client.once('close', fn);
  }

  static connect(target: SshTarget, signal?: AbortSignal, readyTimeoutMs = 20_000): Promise<SshGuestSession> {
    const pinned = publicKeyBlob(target.hostPublicKey);
    return new Promise((resolve, reject) => {
      const client = new Client();
      let hostKeyMismatch = false;
      let settled = false;
      const onAbort = () => {
        client.destroy();
        reject(new BangerError(ErrorCode.Cancelled, 'cancelled while connecting to the guest'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      client
        .once('ready', () => {
          if (settled) return;
          settled = true;
          // Small request/reply packets (channel open, exec, exit status): Nagle's algorithm would hold
          // them back for a delayed ACK, as OpenSSH knows (it sets TCP_NODELAY for sessions too).
          client.setNoDelay(true);
          signal?.removeEventListener('abort', onAbort);
          resolve(new SshGuestSession(client));
        })
        .on('error', (err: Error) => {
          // ssh2 may emit several errors for one failed attempt: settle once, swallow the rest.
          if (settled) return;
          settled = true;
          signal?.removeEventListener('abort', onAbort);
          client.destroy();
          if (hostKeyMismatch)
            reject(
              new BangerError(
                ErrorCode.FailedPrecondition,
                `the guest at ${target.host}:${target.port} presented a host key that does not match the one pinned for this VM`,
                { hint: 'something else may be listening on that port; `banger vm restart` the VM', cause: err },
              ),
            );
          else reject(err);
        })
        .connect({
          host: target.host,
          port: target.port,
          username: target.username,
          privateKey: target.privateKey,
          readyTimeout: readyTimeoutMs,
          // AES-GCM first: guests get the host's AES-NI and PCLMULQDQ (QEMU's `-cpu max` emulates both), so
          // the guest's sshd, which bounds bulk transfers, decrypts it faster than ChaCha20-Poly1305 (measured
          // under TCG, 64 MiB into `cat`: 7.1-8.4 s against 10.3-11.1 s).
          algorithms: {
            cipher: [
              'aes128-gcm@openssh.com',
              'aes256-gcm@openssh.com',
              'chacha20-poly1305@openssh.com',
              'aes128-ctr',
              'aes256-ctr',
            ],
          },
          keepaliveInterval: 15_000,
          keepaliveCountMax: 4,
          hostVerifier: (key: Buffer) => {
            const ok = key.equals(pinned);
            if (!ok) hostKeyMismatch = true;
            return ok;
          },
        });
    });
  }

  /**
   * Connects, retrying while the guest boots, until `deadlineMs` passes or `stillBooting()` says the VM died.
   */
  static async waitFor(
    target: SshTarget,
    opts: { deadlineMs: number; attemptTimeoutMs?: number; signal?: AbortSignal; stillBooting: () => Promise<boolean> },
  ): Promise<SshGuestSession> {
    const end = Date.now() + opts.deadlineMs;
    let lastErr: unknown;
    for (;;) {
      opts.signal?.throwIfAborted();
      try {
        return await SshGuestSession.connect(
          target,
          opts.signal,
          Math.max(2000, Math.min(opts.attemptTimeoutMs ?? 5000, end - Date.now())),
        );
      } catch (e) {
        if (e instanceof BangerError) throw e;
        lastErr = e;
      }
      if (!(await opts.stillBooting()))
        throw new BangerError(ErrorCode.Unavailable, 'the VM stopped before its SSH server answered', {
          hint: 'see the console with `banger vm logs NAME`',
        });
      if (Date.now() > end)
        throw new BangerError(
          ErrorCode.DeadlineExceeded,
          `the guest's SSH server did not answer within ${Math.round(opts.deadlineMs / 1000)} s (${String((lastErr as Error)?.message ?? lastErr)})`,
          { hint: 'see the console with `banger vm logs NAME`' },
        );
      await sleep(250, undefined, { signal: opts.signal });
    }
  }

  exec(command: string, opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    if (this.closed)
      return Promise.reject(new BangerError(ErrorCode.Unavailable, 'the SSH connection to the guest is closed'));
    return new Promise((resolve, reject) => {
      const execOpts: Record<string, unknown> = {};
      if (opts.pty) execOpts.pty = { rows: opts.pty.rows, cols: opts.pty.cols, term: opts.pty.term };
      if (opts.env) execOpts.env = opts.env;
      this.client.exec(command, execOpts, (err, channel) => {
        if (err) {
          reject(new BangerError(ErrorCode.Unavailable, `could not run a command in the guest: ${err.message}`));
          return;
        }
        const collected = new OutputCollector(() => channel.close());
        let code: number | undefined;
        channel.on('exit', (c: number | null, sig?: string) => {
          code = c ?? shellStatus(null, sig ? (sig.startsWith('SIG') ? sig : `SIG${sig}`) : 'SIGHUP');
        });
        if (opts.stdout) channel.pipe(opts.stdout, { end: false });
        else channel.on('data', collected.sink('stdout'));
        if (opts.stderr) channel.stderr.pipe(opts.stderr, { end: false });
        else channel.stderr.on('data', collected.sink('stderr'));
        const onAbort = () => {
          channel.signal('KILL');
          channel.close();
        };
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        channel.on('close', () => {
          opts.signal?.removeEventListener('abort', onAbort);
          if (opts.signal?.aborted) {
            const timedOut = (opts.signal.reason as Error | undefined)?.name === 'TimeoutError';
            reject(
              timedOut
                ? new BangerError(ErrorCode.DeadlineExceeded, 'the guest command did not finish in time')
                : new BangerError(ErrorCode.Cancelled, 'cancelled'),
            );
            return;
          }
          if (collected.overflowed) {
            reject(
              new BangerError(
                ErrorCode.ResourceExhausted,
                `the guest command wrote more than ${MAX_COLLECTED_BYTES} bytes of output; it was stopped`,
              ),
            );
            return;
          }
          if (code === undefined) {
            reject(new BangerError(ErrorCode.Unavailable, 'the guest closed the session without an exit status'));
            return;
          }
          resolve({ code, stdout: Buffer.concat(collected.stdout), stderr: Buffer.concat(collected.stderr) });
        });
        opts.onStart?.({
          resize: (rows, cols) => channel.setWindow(rows, cols, 0, 0),
          signal: (name) => channel.signal(name.replace(/^SIG/, '')),
        });
        wireStdin(channel, opts);
      });
    });
  }

  /**
   * A TCP connection made by the guest's sshd to `host:port` inside the guest (a direct-tcpip channel):
   * how the daemon reaches a guest port without a listener on the host that any local user could open.
   */
  openTcp(host: string, port: number): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      this.client.forwardOut('127.0.0.1', 0, host, port, (err, channel) => (err ? reject(err) : resolve(channel)));
    });
  }

  close(): void {
    this.closed = true;
    this.client.end();
  }
}

function wireStdin(channel: ClientChannel, opts: GuestExecOptions): void {
  if (!opts.stdin) {
    channel.end();
    return;
  }
  opts.stdin.pipe(channel);
  opts.stdin.on('error', () => channel.end());
}
