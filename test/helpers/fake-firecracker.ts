/**
 * A stand-in `firecracker` executable for driver tests: `node --import tsx fake-firecracker.ts --api-sock P
 * --id ID` serves the spec-validating fake API on P, so the driver's real spawn, socket wait and request
 * path are exercised. Behaviour comes from the FAKE_FIRECRACKER environment variable (JSON, FakeBehaviour).
 *
 * Like Firecracker: it refuses to start when the API socket path exists, writes the guest's "serial output"
 * to serial_out_path after InstanceStart, exits when the guest "reboots" after SendCtrlAltDel, and dies on
 * SIGTERM. Its vsock device answers `CONNECT <port>` for the ports in `vsockGuests` (fake-vsock.ts).
 */
import { appendFileSync, existsSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { FirecrackerFake, type RecordedRequest } from './firecracker-fake.js';
import { listenFakeVsock, type FakeVsock } from './fake-vsock.js';

export interface FakeBehaviour {
  /** File rewritten after every request with a FakeRecord (JSON). */
  record?: string;
  /** Faults by "METHOD /path". */
  faults?: Record<string, string>;
  /** Print this on stderr and exit 1 before serving (an early failure, like a bad flag). */
  exitEarly?: string;
  /** Keep running on SIGTERM (so a kill must escalate to SIGKILL). */
  ignoreSigterm?: boolean;
  /** Wait this long before listening (a slow start). */
  startDelayMs?: number;
  /**
   * Guest programs listening on vsock ports: port -> the unix socket standing in for the guest's listener.
   * Like Firecracker, the fake listens on the vsock device's uds_path once `PUT /vsock` was accepted.
   */
  vsockGuests?: Record<string, string>;
}

export interface FakeRecord {
  pid: number;
  argv: string[];
  accepted: RecordedRequest[];
  invalid: RecordedRequest[];
  state: string;
  /** The files its drives were opened from (FirecrackerFake.opened). */
  opened: string[];
  /** Its working directory. */
  cwd: string;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i === -1 ? undefined : process.argv[i + 1];
}

async function main(): Promise<void> {
  const behaviour = JSON.parse(process.env.FAKE_FIRECRACKER ?? '{}') as FakeBehaviour;
  const socketPath = arg('--api-sock');
  const id = arg('--id');
  if (behaviour.exitEarly !== undefined) {
    process.stderr.write(`${behaviour.exitEarly}\n`);
    process.exit(1);
  }
  if (!socketPath) {
    process.stderr.write('fake firecracker: --api-sock is required\n');
    process.exit(1);
  }
  if (existsSync(socketPath)) {
    process.stderr.write(`fake firecracker: Failed to open the API socket: Address in use (${socketPath})\n`);
    process.exit(1);
  }
  if (behaviour.startDelayMs) await new Promise((r) => setTimeout(r, behaviour.startDelayMs));

  const write = (fake: FirecrackerFake) => {
    if (!behaviour.record) return;
    const rec: FakeRecord = {
      pid: process.pid,
      argv: process.argv,
      accepted: fake.accepted,
      invalid: fake.invalid,
      state: fake.state,
      opened: fake.opened,
      cwd: process.cwd(),
    };
    // Atomic, so a reader (or a kill mid-write) never sees half a record.
    writeFileSync(`${behaviour.record}.tmp`, JSON.stringify(rec));
    renameSync(`${behaviour.record}.tmp`, behaviour.record);
  };
  let vsock: Promise<FakeVsock> | undefined;
  const fake: FirecrackerFake = await FirecrackerFake.listen({
    socketPath,
    ...(id !== undefined ? { id } : {}),
    ...(behaviour.faults ? { faults: behaviour.faults } : {}),
    onRequest: (f) => {
      const uds = (f.config.get('/vsock') as { uds_path?: string } | undefined)?.uds_path;
      if (uds !== undefined && vsock === undefined) {
        vsock = listenFakeVsock(uds, (port) => behaviour.vsockGuests?.[String(port)]);
        vsock.catch((e: unknown) => process.stderr.write(`fake firecracker: vsock ${uds}: ${String(e)}\n`));
      }
      write(f);
    },
    onAction: (action) => {
      const serial = (fake.config.get('/serial') as { serial_out_path?: string } | undefined)?.serial_out_path;
      if (action === 'InstanceStart' && serial) appendFileSync(serial, 'fake guest: booting\n');
      if (action === 'SendCtrlAltDel') {
        // The guest's init reboots on Ctrl-Alt-Del; with reboot=k, Firecracker exits.
        setTimeout(() => {
          if (serial) appendFileSync(serial, 'fake guest: reboot: Restarting system\n');
          rmSync(socketPath, { force: true });
          process.exit(0);
        }, 50);
      }
    },
  });
  write(fake);
  process.stdout.write(`fake firecracker ${id ?? ''} listening on ${socketPath}\n`);
  process.on('SIGTERM', () => {
    if (behaviour.ignoreSigterm) return;
    rmSync(socketPath, { force: true });
    process.exit(143);
  });
}

main().catch((e: unknown) => {
  process.stderr.write(`fake firecracker: ${String(e)}\n`);
  process.exit(1);
});
