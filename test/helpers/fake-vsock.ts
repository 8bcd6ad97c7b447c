/**
 * The host side of Firecracker's vsock device, for tests: listens on `uds_path`, reads the `CONNECT <port>\n`
 * line a host program sends, connects to the "guest listener" of that port (a unix socket path standing in for
 * a guest program's AF_VSOCK listener), and only once that connection is accepted answers `OK <host port>\n`
 * and relays bytes both ways. A port nobody listens on, or a malformed request, gets the connection closed,
 * as Firecracker does. Host ports count up from 2^30, Firecracker's first local port.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

/** Firecracker reads at most this many bytes of the CONNECT line. */
const MAX_CONNECT_LINE = 32;
const FIRST_HOST_PORT = 1 << 30;

export interface FakeVsock {
  /** `CONNECT` requests seen, by guest port, whatever their outcome. */
  readonly connects: number[];
  close(): Promise<void>;
}

/** `guests(port)` is the unix socket of the guest listener on vsock `port`, or undefined when none listens. */
export async function listenFakeVsock(
  udsPath: string,
  guests: (port: number) => string | undefined,
): Promise<FakeVsock> {
  const connects: number[] = [];
  const open = new Set<Socket>();
  let nextHostPort = FIRST_HOST_PORT;
  const server: Server = createServer((host) => {
    open.add(host);
    host.on('close', () => open.delete(host));
    host.on('error', () => host.destroy());
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const nl = head.indexOf(0x0a);
      if (nl === -1) {
        if (head.length >= MAX_CONNECT_LINE) host.destroy();
        return;
      }
      host.off('data', onData);
      host.pause();
      const m = /^connect (\d{1,10})$/i.exec(head.subarray(0, nl).toString('latin1').trim());
      const port = m ? Number(m[1]) : undefined;
      if (port !== undefined) connects.push(port);
      const path = port !== undefined ? guests(port) : undefined;
      if (path === undefined) return void host.destroy();
      const guest = connect(path);
      open.add(guest);
      guest.on('close', () => {
        open.delete(guest);
        host.destroy();
      });
      guest.once('error', () => host.destroy());
      host.on('close', () => guest.destroy());
      guest.once('connect', () => {
        host.write(`OK ${nextHostPort++}\n`);
        const rest = head.subarray(nl + 1);
        if (rest.length > 0) guest.write(rest);
        host.pipe(guest);
        guest.pipe(host);
      });
    };
    host.on('data', onData);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(udsPath, () => resolve());
  });
  return {
    connects,
    close: async () => {
      for (const s of open) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
