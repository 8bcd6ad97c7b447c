import net from 'node:net';

/** Asks the kernel for a free TCP port on `host`, avoiding `exclude` (ports other VMs hold). */
export async function pickFreePort(host: string, exclude: ReadonlySet<number>): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, host, () => {
        const addr = s.address();
        s.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
      });
    });
    if (port && !exclude.has(port)) return port;
  }
  throw new Error(`no free TCP port on ${host}`);
}

/** Whether `port` on `host` can be bound right now. */
export function isPortFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}
