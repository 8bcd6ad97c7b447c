/**
 * The host end of a Firecracker vsock connection. Firecracker listens on the vsock device's `uds_path`; a
 * host program connects there, writes `CONNECT <port>\n`, and Firecracker answers `OK <host port>\n` once a
 * guest program accepted on that vsock port, or closes the connection when nothing listens. From then on the
 * socket is a plain byte stream to the guest.
 *
 * The reply line comes from the VMM, but what decides it is the guest (whether it accepts): it is read with a
 * size cap and a deadline like anything else a guest influences.
 */
import { connect, type Socket } from 'node:net';
import { BangerError, ErrorCode } from '../../errors/index.js';

export interface VsockConnectOptions {
  signal?: AbortSignal;
  /** How long the connect and the `OK` reply may take together. Default 10 s. */
  timeoutMs?: number;
}

/** The longest reply line accepted, newline included (`OK 4294967295\n` is 14 bytes). */
export const VSOCK_REPLY_MAX_BYTES = 64;
const DEFAULT_TIMEOUT_MS = 10_000;
const OK_LINE = /^OK (\d{1,10})$/;

/**
 * Connects to guest vsock `port` through the Firecracker vsock socket at `udsPath`. Resolves with the
 * socket once Firecracker confirmed the connection; bytes the guest sent right after the `OK` line are kept
 * in the socket's readable side. The caller owns the socket from then on, its errors included.
 *
 * Rejects with Unavailable when the socket cannot be reached, Firecracker closes the connection (nothing
 * accepted on that port), the reply is not an `OK` line of at most {@link VSOCK_REPLY_MAX_BYTES} bytes, or it
 * does not come within `timeoutMs`; with Cancelled when `signal` aborts. The socket is destroyed on failure.
 */
export function connectVsock(udsPath: string, port: number, opts: VsockConnectOptions = {}): Promise<Socket> {
  if (!Number.isInteger(port) || port < 0 || port > 0xffffffff)
    return Promise.reject(
      new BangerError(ErrorCode.InvalidArgument, `vsock port ${port} is not a whole number from 0 to 4294967295`),
    );
  if (opts.signal?.aborted)
    return Promise.reject(new BangerError(ErrorCode.Cancelled, `cancelled before connecting to vsock port ${port}`));
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const where = `vsock port ${port} through ${udsPath}`;
  const hint =
    'check that the VM is running (`banger vm show NAME`) and that its guest agent started (`banger vm logs NAME`)';

  return new Promise<Socket>((resolve, reject) => {
    const sock = connect(udsPath);
    let head = Buffer.alloc(0);
    let done = false;

    const cleanup = () => {
      done = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      sock.off('readable', onReadable);
      sock.off('end', onEnd);
      sock.off('error', onError);
      sock.off('connect', onConnect);
    };
    const fail = (err: BangerError) => {
      if (done) return;
      cleanup();
      sock.destroy();
      reject(err);
    };
    const onAbort = () => fail(new BangerError(ErrorCode.Cancelled, `cancelled while connecting to ${where}`));
    const onError = (e: NodeJS.ErrnoException) =>
      fail(
        new BangerError(ErrorCode.Unavailable, `cannot connect to ${where}: ${e.code ?? e.message}`, {
          hint:
            e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
              ? "the VM's Firecracker process is not running or has no vsock device: start the VM (`banger vm start NAME`)"
              : hint,
          cause: e,
        }),
      );
    const onEnd = () =>
      fail(
        new BangerError(
          ErrorCode.Unavailable,
          `Firecracker closed the connection to ${where}: nothing in the guest accepted on that port`,
          { hint },
        ),
      );
    const onConnect = () => {
      sock.write(`CONNECT ${port}\n`);
    };
    const onReadable = () => {
      for (;;) {
        if (done) return;
        const chunk = sock.read() as Buffer | null;
        if (chunk === null) return;
        head = Buffer.concat([head, chunk]);
        const nl = head.indexOf(0x0a);
        const lineEnd = nl === -1 ? head.length : nl + 1;
        if (lineEnd > VSOCK_REPLY_MAX_BYTES || (nl === -1 && head.length >= VSOCK_REPLY_MAX_BYTES))
          return fail(
            new BangerError(
              ErrorCode.Unavailable,
              `the reply to CONNECT on ${where} is longer than ${VSOCK_REPLY_MAX_BYTES} bytes; expected \`OK <port>\``,
              { hint: `is ${udsPath} the vsock socket of a Firecracker VM?` },
            ),
          );
        if (nl === -1) continue;
        const line = head.subarray(0, nl).toString('latin1');
        if (!OK_LINE.test(line))
          return fail(
            new BangerError(
              ErrorCode.Unavailable,
              `unexpected reply to CONNECT on ${where}: ${JSON.stringify(line)}; expected \`OK <port>\``,
              { hint: `is ${udsPath} the vsock socket of a Firecracker VM?` },
            ),
          );
        const rest = head.subarray(nl + 1);
        cleanup();
        // The guest may have written right behind Firecracker's OK: those bytes open the stream.
        if (rest.length > 0) sock.unshift(rest);
        resolve(sock);
        return;
      }
    };

    const timer = setTimeout(
      () =>
        fail(
          new BangerError(ErrorCode.Unavailable, `no answer to CONNECT on ${where} within ${timeoutMs} ms`, {
            hint,
          }),
        ),
      timeoutMs,
    );
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('connect', onConnect);
    sock.on('readable', onReadable);
    sock.once('end', onEnd);
    sock.on('error', onError);
  });
}
