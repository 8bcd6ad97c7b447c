import { constants } from 'node:fs';
import { open, readdir, realpath } from 'node:fs/promises';
import { isAbsolute, join, relative } from 'node:path';
import type { SyncEntry } from '../../../shared/config.js';
import type { CommandRunner } from '../../../shared/command.js';

/**
 * The host half of an identity sync: what the invoking user has (git identity, SSH public keys, the files
 * config.json names), read from their home directory without following a link out of it, without blocking
 * on a FIFO and with a size cap. Contents stay in memory only: callers log paths, never bytes.
 */

/** The most one synced file may hold: credentials and config files, not data. */
export const MAX_SYNC_FILE_BYTES = 1 << 20;
const MAX_KEY_FILE_BYTES = 16 * 1024;

export interface SyncFile {
  host: string;
  guest: string;
  /** Octal, e.g. "0600". */
  mode: string;
  content: Buffer;
}

export interface HostIdentity {
  git: { name?: string; email?: string };
  /** Public key lines, one per key, with the file each came from. */
  keys: { file: string; line: string }[];
  files: SyncFile[];
  warnings: string[];
}

/** A public key line as OpenSSH writes it: type, base64 blob, optional comment; nothing else. */
const PUBLIC_KEY = /^(ssh-[a-z0-9-]+|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+={0,3}( [^\n\r]*)?$/;
/** The key files `ssh-keygen` makes by default: id_ed25519.pub, id_rsa.pub, id_ecdsa_sk.pub... */
const KEY_FILE = /^id_[a-z0-9_]+\.pub$/;
/** A value with a control character (a newline, an escape) is not an identity anyone typed. */
const hasControl = (v: string) => [...v].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);

export interface CollectDeps {
  run: CommandRunner;
}

export async function collectHostIdentity(
  home: string,
  entries: readonly SyncEntry[],
  d: CollectDeps,
  signal?: AbortSignal,
): Promise<HostIdentity> {
  const warnings: string[] = [];
  const git = await gitIdentity(home, d.run, signal);
  const keys = await publicKeys(home, warnings);
  const files: SyncFile[] = [];
  for (const e of entries) {
    signal?.throwIfAborted();
    const host = expandHome(e.host, home);
    const read = await readSyncedFile(host, home, e.followLinks);
    if (typeof read === 'string') warnings.push(`${e.host}: ${read}; not synced`);
    else files.push({ host: e.host, guest: e.guest, mode: e.mode.padStart(4, '0'), content: read });
  }
  return { git, keys, files, warnings };
}

/** `~/x` and `~` are the user's home; anything else is taken as written (a relative path is refused later). */
export function expandHome(path: string, home: string): string {
  if (path === '~') return home;
  if (path.startsWith('~/')) return join(home, path.slice(2));
  return path;
}

async function gitIdentity(home: string, run: CommandRunner, signal?: AbortSignal): Promise<HostIdentity['git']> {
  const get = async (key: string): Promise<string | undefined> => {
    try {
      const r = await run('git', ['config', '--global', '--get', key], {
        env: { ...process.env, HOME: home, XDG_CONFIG_HOME: join(home, '.config'), GIT_CONFIG_NOSYSTEM: '1' },
        allowFailure: true,
        maxOutputBytes: 4096,
        signal,
      });
      const v = r.code === 0 ? r.stdout.trim() : '';
      return v && v.length <= 256 && !hasControl(v) ? v : undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // no git on the host
      throw e;
    }
  };
  const name = await get('user.name');
  const email = await get('user.email');
  return { ...(name ? { name } : {}), ...(email ? { email } : {}) };
}

async function publicKeys(home: string, warnings: string[]): Promise<HostIdentity['keys']> {
  const dir = join(home, '.ssh');
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => KEY_FILE.test(n)).sort();
  } catch {
    return [];
  }
  const keys: HostIdentity['keys'] = [];
  for (const n of names) {
    const read = await readSyncedFile(join(dir, n), home, false, MAX_KEY_FILE_BYTES);
    if (typeof read === 'string') {
      warnings.push(`~/.ssh/${n}: ${read}; not added`);
      continue;
    }
    const line = read.toString('utf8').trim();
    if (!PUBLIC_KEY.test(line)) warnings.push(`~/.ssh/${n}: not a single OpenSSH public key line; not added`);
    else keys.push({ file: `~/.ssh/${n}`, line });
  }
  return keys;
}

const within = (dir: string, p: string) => {
  const r = relative(dir, p);
  return r === '' || (!r.startsWith('..') && !isAbsolute(r));
};

/**
 * Reads a regular file of at most `max` bytes, or says why not (a string). A path inside the home whose
 * real path leaves it (a link to /etc, say) is refused unless `followLinks`; the descriptor is opened
 * non-blocking (a FIFO cannot stall the daemon) and its type checked before reading.
 */
export async function readSyncedFile(
  path: string,
  home: string,
  followLinks: boolean,
  max = MAX_SYNC_FILE_BYTES,
): Promise<Buffer | string> {
  if (!isAbsolute(path)) return 'not an absolute path (use ~/ for the home directory)';
  let real: string;
  try {
    real = await realpath(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? 'missing on the host' : `cannot be read (${code})`;
  }
  const realHome = await realpath(home).catch(() => home);
  if (within(home, path) && !within(realHome, real) && !followLinks)
    return `a link out of the home directory (to ${real}); set "followLinks": true in its entry to allow it`;
  let fh;
  try {
    fh = await open(real, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    return `cannot be read (${(e as NodeJS.ErrnoException).code})`;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return 'not a regular file';
    if (st.size > max) return `larger than ${max} bytes`;
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < st.size) {
      const { bytesRead } = await fh.read(buf, got, st.size - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got);
  } finally {
    await fh.close();
  }
}
