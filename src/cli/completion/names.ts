/**
 * `banger __complete KIND [ARG]`: the names a completion script offers at TAB time, one per line.
 *   vm any|running|stopped   VM names (stopped: every VM that is not running, starting or stopping)
 *   image                    image names
 *   session VM               session names of VM
 * It connects to bangerd only if it is already running (never starts it), gives up after
 * COMPLETE_TIMEOUT_MS, and prints nothing on any failure: a TAB must never hang, start a daemon or print
 * an error into the command line. cli/main.ts runs it before building the commander program, and this
 * module imports only the RPC client and the protocol descriptors it calls.
 */
import { BangerClient } from '../../client/client.js';
import { ImageMethods } from '../../protocol/image.js';
import { SessionMethods } from '../../protocol/session.js';
import { VmMethods } from '../../protocol/vm.js';
import type { VmFilter } from './spec.js';

export const COMPLETE_TIMEOUT_MS = 1000;

/**
 * Names the scripts may offer: plain words only. Session names come from the guest, and a completion
 * script hands what it gets to the shell's command line, so anything else is left out.
 */
const OFFERABLE = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

const BUSY = new Set(['running', 'starting', 'stopping']);

/** The VMs a `<vm>` argument with this filter offers. */
export function vmNames(vms: readonly { name: string; state: string }[], filter: VmFilter): string[] {
  const keep = (state: string) => (filter === 'running' ? state === 'running' : filter === 'stopped' ? !BUSY.has(state) : true);
  return vms.filter((v) => keep(v.state)).map((v) => v.name);
}

async function fetchNames(client: BangerClient, args: readonly string[], signal: AbortSignal): Promise<string[]> {
  const [kind, arg] = args;
  switch (kind) {
    case 'vm': {
      const filter: VmFilter = arg === 'running' || arg === 'stopped' ? arg : 'any';
      return vmNames(await client.call(VmMethods.list, undefined, { signal }), filter);
    }
    case 'image':
      return (await client.call(ImageMethods.list, undefined, { signal })).map((i) => i.name);
    case 'session':
      if (!arg) return [];
      return (await client.call(SessionMethods.list, { vm: arg }, { signal })).map((s) => s.name);
    default:
      return [];
  }
}

/** The names for `__complete ARGS`; [] when the daemon is not running, fails or is slow. */
export async function completeNames(args: readonly string[], socketPath: string, timeoutMs = COMPLETE_TIMEOUT_MS): Promise<string[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  const timedOut = new Promise<string[]>((resolve) => ac.signal.addEventListener('abort', () => resolve([]), { once: true }));
  let client: BangerClient | undefined;
  const work = BangerClient.connect(socketPath)
    .then((c) => {
      client = c;
      // Connected after the time ran out: nobody waits for the answer.
      if (ac.signal.aborted) return [];
      return fetchNames(c, args, ac.signal);
    })
    .catch(() => []);
  try {
    const names = await Promise.race([work, timedOut]);
    return names.filter((n) => OFFERABLE.test(n));
  } finally {
    clearTimeout(timer);
    ac.abort();
    client?.close();
    // A connect still under way: close it once it lands.
    void work.then(() => client?.close());
  }
}
