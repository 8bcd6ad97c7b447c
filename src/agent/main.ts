import { setPriority } from 'node:os';
import { existsSync, readdirSync } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { spawn } from 'node:child_process';
import { Duplex, type Readable, type Writable } from 'node:stream';
import { AGENT_VIRTIO_PORT } from '../protocol/agent.js';
import { AgentServer } from './server.js';
import { onPath } from './which.js';

/**
 * `banger-agent`: started by the guest's init, serves the daemon until the guest powers off.
 *
 *   banger-agent [--port DEVICE]   the virtio-serial port (default /dev/virtio-ports/banger.0): reopened
 *     [--ready-file PATH]          whenever the host side goes away, so a restarted daemon reconnects;
 *                                  PATH is created once the port is open (the guest's ready marker waits)
 *   banger-agent --listen PATH     a unix socket (tests, and a vsock bridge such as socat)
 *   --sessions DIR                 where sessions are kept (default /root/.banger/sessions, the work disk)
 *   --session-cap BYTES            default per-stream cap on a session's kept output (default 64 MiB)
 *   --priority N                   the scheduling priority (nice value) to take once started: run-agent
 *                                  starts Node niced, and the commands the agent runs inherit this one
 *
 * MALLOC_ARENA_MAX and MALLOC_TRIM_THRESHOLD_ (run-agent's tuning of the agent's own malloc) are not passed
 * on to commands.
 *
 * Runs on the guest's Node 18: no Node 20-only APIs here or in what it imports.
 */

const AGENT_VERSION = '0.1.0';
/**
 * Pauses before the port is opened again, by how many connections in a row ended within QUICK_END_MS. While no
 * host is connected, each open reads end-of-file at once and starts two `cat`s: every 250 ms that cost a third
 * of a host CPU per VM under TCG while bangerd was stopped. The first retries stay quick, so a restarting
 * daemon is served at once; after about a second without one the agent looks every two seconds.
 */
const REOPEN_DELAYS_MS = [250, 250, 250, 500, 1000, 2000];
const QUICK_END_MS = 1000;
/** util-linux's setpriv (in every Debian system). */
const SETPRIV = '/usr/bin/setpriv';
const DEFAULT_SESSIONS_DIR = '/root/.banger/sessions';

function log(line: string): void {
  process.stderr.write(`${new Date().toISOString()} ${line}\n`);
}

async function servePort(server: AgentServer, device: string, readyFile?: string): Promise<never> {
  let quickEnds = 0;
  for (;;) {
    const opened = Date.now();
    try {
      const fh = await open(device, 'r+');
      // The guest's init prints its ready marker once this exists: the agent holds its channel.
      if (readyFile !== undefined) await writeFile(readyFile, `${process.pid}\n`).catch(() => {});
      const reader = portReader(fh.fd);
      const writer = portWriter(fh.fd);
      try {
        await server.serve(Duplex.from({ readable: reader.readable, writable: writer.writable }));
      } finally {
        await Promise.all([reader.stop(), writer.stop()]);
      }
      await fh.close().catch(() => {});
    } catch (e) {
      log(`banger-agent: ${device}: ${(e as Error).message}`);
    }
    // A read of a port whose host side is closed returns end-of-file at once: wait before trying again.
    quickEnds = Date.now() - opened < QUICK_END_MS ? quickEnds + 1 : 0;
    await new Promise((r) => setTimeout(r, REOPEN_DELAYS_MS[Math.min(quickEnds, REOPEN_DELAYS_MS.length - 1)]));
  }
}

/**
 * A `cat` between the port and a pipe that Node reads or writes as a stream, in C. The guest's virtio console
 * driver hands out one 4 KiB buffer per read(2), and each read or write through Node's thread pool (an fs
 * stream) cost a millisecond or more under emulation, one at a time: data sent into the guest (a `vm exec`'s
 * stdin) crawled at 4 MiB/s, and every frame the agent sent (an exec's reply, output and exit) waited for the
 * write before it. Under setpriv's parent-death signal cat dies with the agent (kill -9 included). Otherwise
 * it would keep the port open, and the port opens only once at a time: the agent init respawns would find it
 * busy until the host's next write made cat die of a broken pipe.
 */
function portCat(stdio: ['pipe', number, 'ignore'] | [number, 'pipe', 'ignore']) {
  const argv = existsSync(SETPRIV) ? [SETPRIV, '--pdeathsig', 'KILL', 'cat'] : ['cat'];
  const cat = spawn(argv[0]!, argv.slice(1), { stdio });
  const exited = new Promise<void>((resolve) => {
    if (cat.exitCode !== null || cat.signalCode !== null) resolve();
    else cat.once('close', () => resolve());
  });
  cat.once('error', (e) => log(`banger-agent: cat of the port: ${e.message}`));
  return { cat, exited };
}

/** What reads the port: cat copies it into a pipe; it ends with the port's end of file (its host side closed). */
function portReader(fd: number): { readable: Readable; stop(): Promise<void> } {
  const { cat, exited } = portCat([fd, 'pipe', 'ignore']);
  return {
    readable: cat.stdout!,
    // The port is closed only once cat no longer holds it.
    async stop() {
      cat.kill('SIGKILL');
      await exited;
    },
  };
}

/** What writes the port: cat copies a pipe into it. */
function portWriter(fd: number): { writable: Writable; stop(): Promise<void> } {
  const { cat, exited } = portCat(['pipe', fd, 'ignore']);
  const writable = cat.stdin!;
  writable.on('error', () => {}); // EPIPE once cat is gone: the reader's end of file ends the connection
  return {
    writable,
    // At once, with whatever it has not written: the connection is over (its host side went, or it broke the
    // protocol). A write to a port whose host side is gone blocks until a host connects again, and would
    // hand that next daemon the old one's replies; and until cat exits the port stays open, and what the
    // next daemon sends meanwhile is discarded with it when it closes.
    async stop() {
      cat.kill('SIGKILL');
      await exited;
    },
  };
}

/** Linux keeps a nice value per thread: every thread already started (I/O pool, V8 workers) is set. */
function takePriority(priority: number): void {
  let tids: string[];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    tids = ['0'];
  }
  for (const tid of tids) {
    try {
      setPriority(Number(tid), priority);
    } catch (e) {
      log(`banger-agent: cannot take priority ${priority} for thread ${tid}: ${(e as Error).message}`);
    }
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const priority = value('--priority');
  if (priority !== undefined) {
    if (!/^-?\d+$/.test(priority)) throw new Error(`--priority takes a nice value, not ${JSON.stringify(priority)}`);
    takePriority(Number(priority));
  }
  delete process.env.MALLOC_ARENA_MAX;
  delete process.env.MALLOC_TRIM_THRESHOLD_;
  const cap = value('--session-cap');
  if (cap !== undefined && !(Number.isSafeInteger(Number(cap)) && Number(cap) > 0))
    throw new Error(`--session-cap takes a number of bytes, not ${JSON.stringify(cap)}`);
  const server = new AgentServer({
    agentVersion: AGENT_VERSION,
    python: onPath('python3', process.env.PATH ?? '/usr/bin:/bin'),
    log,
    sessions: {
      root: value('--sessions') ?? DEFAULT_SESSIONS_DIR,
      capBytes: cap === undefined ? undefined : Number(cap),
    },
  });
  const listen = value('--listen');
  if (listen !== undefined) {
    const net = createServer((sock) => void server.serve(sock));
    await new Promise<void>((resolve, reject) => net.once('error', reject).listen(listen, resolve));
    log(`banger-agent ${AGENT_VERSION}: listening on ${listen}`);
    return;
  }
  const device = value('--port') ?? AGENT_VIRTIO_PORT;
  log(`banger-agent ${AGENT_VERSION}: serving ${device}`);
  await servePort(server, device, value('--ready-file'));
}

main().catch((e: unknown) => {
  log(`banger-agent: ${e instanceof Error ? e.message : String(e)}`);
  process.exitCode = 1;
});
