/**
 * The tap network's JSON state file: what banger made on the host (the bridge, its nft tables, each VM's
 * tap, address and MAC, whether it switched ip_forward on). TapNetwork (tap.ts) records a change here
 * before it makes it, so `down()` and `reconcile()` can remove it after a crash.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { failedPrecondition } from '../../../errors/index.js';
import type { TapVm } from './tap-addresses.js';

/** The JSON state file: what banger made on the host. */
export interface TapState {
  version: 1;
  /** Present from the first `up()` until `down()`. */
  bridge?: { name: string; subnet: string };
  /** Whether banger's nft tables may exist. */
  tables: boolean;
  /** Set when banger switched net.ipv4.ip_forward on (for an egress VM); `down()` switches it back. */
  ipForwardEnabled?: boolean;
  vms: Record<string, TapVm>;
}

const emptyState = (): TapState => ({ version: 1, tables: false, vms: {} });

/** The state recorded at `statePath`; an empty state when there is no file. */
export async function loadTapState(statePath: string): Promise<TapState> {
  let text: string;
  try {
    text = await readFile(statePath, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyState();
    throw e;
  }
  try {
    const st = JSON.parse(text) as TapState;
    if (st.version !== 1 || typeof st.vms !== 'object' || st.vms === null) throw new Error('unknown format');
    return st;
  } catch (e) {
    throw failedPrecondition(
      `the tap network state file ${statePath} is unreadable: ${(e as Error).message}`,
      'run `banger network down` after removing the bridge and `bgr-*` taps by hand, or delete the file',
    );
  }
}

/** Writes the state atomically (temporary file + rename), mode 0600. */
export async function saveTapState(statePath: string, st: TapState): Promise<void> {
  await mkdir(dirname(statePath), { recursive: true });
  const tmp = `${statePath}.tmp`;
  await writeFile(tmp, JSON.stringify(st, null, 2) + '\n', { mode: 0o600 });
  await rename(tmp, statePath);
}
