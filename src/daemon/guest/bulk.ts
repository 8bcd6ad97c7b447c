import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { shq } from './shell.js';
import type { GuestExecOptions, GuestExecResult, GuestSession } from './session.js';

/**
 * A command's stdin through the VM's bulk port: a second virtio-serial port (`BULK_PORT_NAME`, QEMU only) whose
 * guest end the command's shell reads itself, so the bytes pass no guest agent and no SSH. Under software
 * emulation every byte the guest's Node agent relays costs guest CPU (about 40% of a vCPU at 16 MiB/s, plus two
 * more pipe copies); read by `head`, the port moved a 215 MiB tar at about 48 MiB/s here. Workspace imports use
 * it (VmGuestAccess.transferSession); their commands still run, and report, over the session it wraps.
 *
 * The wire, host to guest, on a connection made for one command:
 *   TOKEN "\n"               a random token, which the command was also given: the guest skips what is before it
 *                            (bytes an aborted transfer left in the port's buffers)
 *   (LENGTH "\n" BYTES)*     the stdin in chunks, LENGTH in decimal
 *   "0\n"                    the end: the guest's reader exits and the command sees end of file
 * The end is in the stream because the connection cannot carry it: QEMU drops what it has not yet passed to the
 * guest when the host closes its end (seen here: a transfer closed right after its last write arrived short by
 * 700-800 KB). So the connection stays open until the command has exited, and is closed then.
 *
 * The guest end is `bulk_in` (BULK_IN_FN) in a pipe to the command. Before the host connects, a read of the port
 * returns end of file at once: bulk_in reads again until the token arrives (BULK_WAIT_TRIES). The port opens once
 * at a time in the guest; a reader left by an earlier command (its host end closed, it is about to exit) is
 * waited for the same way.
 */

/** The name the guest sees for the bulk port (/sys/class/virtio-ports/X/name). */
export const BULK_PORT_NAME = 'banger.bulk';

/**
 * A chunk goes once it holds this much (it may hold one piece of the source more). Each costs the guest a `head`
 * process (tens of milliseconds of a vCPU under emulation, while the import keeps both busy): 16 MiB chunks took
 * a 4,000-file / 40 MiB import from 8.1 s to 7.5 s here (median of 6 alternating runs each) against 4 MiB. The
 * daemon holds one chunk, and the socket's buffer up to one more.
 */
export const BULK_CHUNK_BYTES = 16 * 1024 * 1024;
/**
 * A stdin known to be smaller than this goes through the agent, not the port: the port costs the guest a shell,
 * its reader and a `head` before the command starts (a re-sync of one edited file took 1.43 s instead of 1.57 s
 * without it, medians of 12 alternating runs here), and carries only throughput, which a small stdin does not need.
 */
export const BULK_MIN_BYTES = 4 * 1024 * 1024;
/** A chunk smaller than BULK_CHUNK_BYTES goes once its first byte has waited this long (a slow producer). */
const BULK_FLUSH_MS = 20;
/** How long the host side may take to connect, in tries of BULK_WAIT_SLEEP seconds each (10 s). */
const BULK_WAIT_TRIES = 200;
const BULK_WAIT_SLEEP = '0.05';

/** What a guest message from bulk_in starts with. */
export const BULK_STDERR_PREFIX = 'banger-bulk: ';

/**
 * The guest's shell function `bulk_in TOKEN [DEVICE]` (tests name the device): copies the bulk port's stdin (the wire above) to stdout, exits 0 at
 * the end marker and non-zero (with a message on stderr) when the port is missing or busy, the token does not
 * come, or the stream breaks off. dash's `read` takes one byte per read(2), and `head -c N` reads exactly N, so
 * nothing past a header or chunk is consumed by the wrong reader.
 */
export const BULK_IN_FN = `bulk_in() {
  bulk_dev=\${2:-}
  [ -n "$bulk_dev" ] || for bulk_n in /sys/class/virtio-ports/*/name; do
    IFS= read -r bulk_nm < "$bulk_n" 2>/dev/null || continue
    if [ "$bulk_nm" = ${BULK_PORT_NAME} ]; then bulk_n=\${bulk_n%/name}; bulk_dev=/dev/\${bulk_n##*/}; fi
  done
  if [ -z "$bulk_dev" ]; then echo "${BULK_STDERR_PREFIX}the guest has no ${BULK_PORT_NAME} port" >&2; return 1; fi
  bulk_try=0
  while :; do
    bulk_open=
    { bulk_open=1; bulk_copy "$1"; } 3>&2 2>/dev/null < "$bulk_dev"
    bulk_rc=$?
    if [ -n "$bulk_open" ]; then return "$bulk_rc"; fi
    bulk_try=$((bulk_try + 1))
    if [ "$bulk_try" -ge ${BULK_WAIT_TRIES} ]; then echo "${BULK_STDERR_PREFIX}$bulk_dev stayed busy" >&2; return 1; fi
    sleep ${BULK_WAIT_SLEEP}
  done
}
bulk_copy() {
  bulk_try=0
  while :; do
    if IFS= read -r bulk_line; then
      case $bulk_line in *"$1") break ;; esac
    else
      bulk_try=$((bulk_try + 1))
      if [ "$bulk_try" -ge ${BULK_WAIT_TRIES} ]; then echo "${BULK_STDERR_PREFIX}the host did not send its stream" >&3; return 1; fi
      sleep ${BULK_WAIT_SLEEP}
    fi
  done
  while IFS= read -r bulk_len; do
    case $bulk_len in
      0) return 0 ;;
      '' | *[!0-9]*) echo "${BULK_STDERR_PREFIX}the stream has a bad chunk header" >&3; return 1 ;;
    esac
    head -c "$bulk_len" || return 1
  done
  echo "${BULK_STDERR_PREFIX}the stream ended early" >&3
  return 1
}
`;

/** The command line that runs `command` (a /bin/sh line) with the bulk stream of `token` as its stdin. */
export function bulkCommand(token: string, command: string): string {
  if (!/^[0-9a-f]{32}$/.test(token)) throw new Error('a bulk token is 32 hex digits');
  return `${BULK_IN_FN}bulk_in ${token} | /bin/sh -c ${shq(command)}`;
}

/**
 * Writes `source` to `out` in the wire's chunks, after the token line, and the end marker once it ends.
 * Resolves when all of it was handed to `out`; rejects when `source` fails. Holds about a chunk at most.
 */
export function writeBulk(source: Readable, out: Socket, token: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let parts: Buffer[] = [];
    let size = 0;
    let timer: NodeJS.Timeout | undefined;
    const flush = () => {
      clearTimeout(timer);
      timer = undefined;
      if (size === 0) return;
      // The pieces go as they are (no copy into one buffer of the chunk's size), in one write to the socket.
      out.cork();
      out.write(`${size}\n`);
      let room = true;
      for (const p of parts) room = out.write(p);
      out.uncork();
      parts = [];
      size = 0;
      if (!room) {
        source.pause();
        out.once('drain', () => source.resume());
      }
    };
    const done = (e?: Error) => {
      clearTimeout(timer);
      source.off('data', onData);
      source.off('end', onEnd);
      source.off('error', onError);
      out.off('error', onError);
      if (e) reject(e);
      else resolve();
    };
    const onData = (d: Buffer) => {
      parts.push(d);
      size += d.length;
      if (size >= BULK_CHUNK_BYTES) flush();
      else timer ??= setTimeout(flush, BULK_FLUSH_MS);
    };
    const onEnd = () => {
      flush();
      out.write('0\n', () => done());
    };
    const onError = (e: Error) => done(e);
    out.write(`${token}\n`);
    source.on('data', onData);
    source.once('end', onEnd);
    source.once('error', onError);
    out.once('error', onError);
  });
}

function connectSocket(path: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    const timer = setTimeout(() => s.destroy(new Error(`no connection to ${path} within ${timeoutMs} ms`)), timeoutMs);
    const onError = (e: Error) => {
      clearTimeout(timer);
      reject(e);
    };
    s.once('error', onError);
    s.once('connect', () => {
      clearTimeout(timer);
      s.off('error', onError);
      resolve(s);
    });
  });
}

/**
 * A guest session whose commands get their stdin through the bulk port at `socketPath` (QEMU's host end of it);
 * everything else, commands without stdin and those whose stdin is known to be small (BULK_MIN_BYTES), go through
 * `inner` unchanged. When the port cannot be connected
 * the command gets its stdin through `inner` (onFallback says why). One command at a time may use a VM's port (the
 * guest opens it once at a time, and QEMU serves one host connection at a time): its callers, the workspace
 * service's imports, already run one at a time per VM.
 */
export class BulkStdinSession implements GuestSession {
  constructor(
    private readonly inner: GuestSession & { isClosed: boolean },
    private readonly socketPath: string,
    private readonly onFallback: (err: Error) => void,
  ) {}

  get isClosed(): boolean {
    return this.inner.isClosed;
  }

  exec(command: string, opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    const small = opts.stdinBytes !== undefined && opts.stdinBytes < BULK_MIN_BYTES;
    return opts.stdin === undefined || small ? this.inner.exec(command, opts) : this.viaPort(command, opts.stdin, opts);
  }

  private async viaPort(command: string, stdin: Readable, opts: GuestExecOptions): Promise<GuestExecResult> {
    opts.signal?.throwIfAborted();
    let sock: Socket;
    try {
      sock = await connectSocket(this.socketPath, 5000);
    } catch (e) {
      this.onFallback(e as Error);
      return this.inner.exec(command, opts);
    }
    sock.on('error', () => {});
    // What the guest sends back on the port is nothing banger reads: discarded, never buffered.
    sock.resume();
    const token = randomBytes(16).toString('hex');
    // A source that fails closes the port: the guest's reader sees the stream end early, and the command fails.
    const written = writeBulk(stdin, sock, token).catch((e: Error) => {
      sock.destroy();
      throw e;
    });
    written.catch(() => {});
    try {
      return await this.inner.exec(bulkCommand(token, command), { ...opts, stdin: undefined });
    } finally {
      // Closed only now (see the wire above). A command that exited before its stdin ended leaves the copy to
      // fail on the closed socket; the caller destroys its source.
      sock.destroy();
    }
  }
}
