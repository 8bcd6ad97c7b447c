import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AGENT_MAX_PORTS, type AgentPortList, type ListeningPort } from '../protocol/agent.js';
import { procAddress } from '../shared/proc-net.js';

/** The `st` column of /proc/net/tcp{,6} for a listening socket. */
const LISTEN = '0A';

/** The listening sockets of one /proc/net/tcp or tcp6 listing, unsorted, duplicates included. */
export function parseProcNetTcp(text: string): ListeningPort[] {
  const out: ListeningPort[] = [];
  for (const line of text.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 4 || cols[3] !== LISTEN) continue;
    const [addrHex, portHex] = (cols[1] ?? '').split(':');
    if (!addrHex || !portHex || !/^[0-9A-Fa-f]{1,4}$/.test(portHex)) continue;
    const address = procAddress(addrHex);
    const port = parseInt(portHex, 16);
    if (address !== null && port > 0) out.push({ port, address });
  }
  return out;
}

/** Sorted by port then address, without duplicates, at most AGENT_MAX_PORTS entries. */
export function portList(entries: readonly ListeningPort[], max = AGENT_MAX_PORTS): AgentPortList {
  const seen = new Set<string>();
  const unique: ListeningPort[] = [];
  for (const e of entries) {
    const key = `${e.port} ${e.address}`;
    if (seen.has(key)) continue;
    seen.add(key);
    unique.push(e);
  }
  unique.sort((a, b) => a.port - b.port || (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  return { ports: unique.slice(0, max), truncated: unique.length > max };
}

export interface PortWatcherOptions {
  /** Where `tcp` and `tcp6` are read (default /proc/net; tests point it at a directory of their own). */
  procNetDir?: string;
  /** How often the files are read while anyone watches (default 1000 ms). */
  intervalMs?: number;
  log?: (line: string) => void;
}

type Listener = (list: AgentPortList) => void;

/**
 * The guest's listening TCP sockets, read from /proc (no process is started) every `intervalMs` while at
 * least one connection watches, and told to the watchers only when the list changed. Shared by all
 * connections: one read per interval however many watch.
 */
export class PortWatcher {
  private readonly listeners = new Set<Listener>();
  private current: AgentPortList = { ports: [], truncated: false };
  private key = '';
  private timer: NodeJS.Timeout | null = null;
  private reading: Promise<void> | null = null;
  private readFailed = false;

  constructor(private readonly opts: PortWatcherOptions = {}) {}

  /** Reads the list now and adds `listener` for later changes; returns the list it starts from. */
  async watch(listener: Listener): Promise<AgentPortList> {
    await this.read();
    this.listeners.add(listener);
    this.schedule();
    return this.current;
  }

  unwatch(listener: Listener): void {
    this.listeners.delete(listener);
    if (this.listeners.size === 0 && this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  private schedule(): void {
    if (this.timer !== null || this.listeners.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.read().then(() => this.schedule());
    }, this.opts.intervalMs ?? 1000);
    this.timer.unref();
  }

  /** One read at a time; a caller arriving during a read waits for it and reads again (it wants news). */
  private read(): Promise<void> {
    const next = (this.reading ?? Promise.resolve()).then(() => this.readOnce());
    this.reading = next;
    void next.finally(() => {
      if (this.reading === next) this.reading = null;
    });
    return next;
  }

  private async readOnce(): Promise<void> {
    const dir = this.opts.procNetDir ?? '/proc/net';
    // Read synchronously: /proc answers from memory, and a read costs far less than the thread-pool round trips
    // of an asynchronous one (which add up under TCG, once a second for the guest's whole life).
    const read = (f: string) => {
      try {
        return readFileSync(join(dir, f), 'latin1');
      } catch (e) {
        // tcp6 is absent where IPv6 is off; say a missing tcp once.
        if (f === 'tcp' && !this.readFailed) this.opts.log?.(`banger-agent: cannot read ${dir}/tcp: ${(e as Error).message}`);
        if (f === 'tcp') this.readFailed = true;
        return '';
      }
    };
    const list = portList([...parseProcNetTcp(read('tcp')), ...parseProcNetTcp(read('tcp6'))]);
    const key = JSON.stringify(list);
    if (key === this.key) return;
    this.key = key;
    this.current = list;
    for (const l of this.listeners) l(list);
  }
}
