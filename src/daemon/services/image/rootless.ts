/**
 * Image builds as a normal user (uid != 0, no sudo), with the subordinate ids of /etc/subuid and /etc/subgid.
 *
 * mmdebstrap bootstraps in its unshare mode and writes a tarball (its mapped root cannot enter the user's
 * 0700 state directory, but the tarball is written by mmdebstrap's outer process, as the user). The tarball
 * is unpacked into the build's tree inside a user namespace of banger's own, {@link userNsArgv}: the user
 * is root there and the subordinate ids are 1..N. Seen from outside, the tree's root-owned files (nearly
 * all of it) belong to the user, so the daemon's ordinary steps (mise, guest files, initrd) write into it
 * as they do as root; `du`, `mkfs.ext4 -d` and removal run in the same kind of namespace, where every
 * owner reads back as the guest's own id. Nothing here needs root or a setuid helper besides
 * newuidmap/newgidmap (Debian's uidmap package).
 */
import { readFile, rm } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';

/** A block of subordinate ids: outer ids `start`..`start+count-1`. */
export interface IdRange {
  start: number;
  count: number;
}

/**
 * The first block /etc/subuid (or /etc/subgid) text gives the user, by name or by number; undefined
 * when it gives none. Lines are `name-or-id:start:count`.
 */
export function subordinateRange(text: string, user: { name: string; id: number }): IdRange | undefined {
  for (const line of text.split('\n')) {
    const [who, start, count] = line.trim().split(':');
    if (who !== user.name && who !== String(user.id)) continue;
    const s = Number(start);
    const c = Number(count);
    if (Number.isInteger(s) && Number.isInteger(c) && s > 0 && c > 0) return { start: s, count: c };
  }
  return undefined;
}

/** The `usermod` command (run as root) that gives `name` subordinate ids. */
export function subidFixCommand(name: string): string {
  return `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 ${name}`;
}

/**
 * `unshare` argv running `cmd args` in a new user namespace where the calling user is root (uid/gid 0)
 * and the subordinate ranges are ids 1..count: the owners of a guest tree as the guest sees them.
 */
export function userNsArgv(uids: IdRange, gids: IdRange, cmd: string, args: readonly string[]): string[] {
  return [
    '--map-root-user',
    `--map-users=${uids.start},1,${uids.count}`,
    `--map-groups=${gids.start},1,${gids.count}`,
    '--',
    cmd,
    ...args,
  ];
}

/** The user's subordinate uid and gid ranges; FailedPrecondition (with the fix) when either is missing. */
export async function readSubordinateIds(
  read: (path: string) => Promise<string> = (p) => readFile(p, 'utf8'),
  user: { name: string; id: number } = { name: userInfo().username, id: process.getuid?.() ?? 0 },
): Promise<{ uids: IdRange; gids: IdRange }> {
  const text = (p: string) => read(p).catch(() => '');
  const uids = subordinateRange(await text('/etc/subuid'), user);
  const gids = subordinateRange(await text('/etc/subgid'), { name: user.name, id: process.getgid?.() ?? user.id });
  if (!uids || !gids)
    throw new BangerError(
      ErrorCode.FailedPrecondition,
      `building an image as a normal user needs subordinate ids for ${user.name} in /etc/subuid and /etc/subgid (${!uids ? 'no uid range' : 'no gid range'})`,
      { hint: `ask root to run \`${subidFixCommand(user.name)}\` (and \`apt-get install uidmap\`), or build as root` },
    );
  return { uids, gids };
}

/** Runs commands inside the user namespace of {@link userNsArgv}; ranges are read on first use. */
export function userNsRunner(run: CommandRunner, ids: () => Promise<{ uids: IdRange; gids: IdRange }> = readSubordinateIds): CommandRunner {
  let cached: Promise<{ uids: IdRange; gids: IdRange }> | undefined;
  return async (cmd, args, opts) => {
    cached ??= ids();
    const { uids, gids } = await cached.catch((e: unknown) => {
      cached = undefined;
      throw e;
    });
    return run('unshare', userNsArgv(uids, gids, cmd, args), opts);
  };
}

/**
 * Removes a tree that may hold files of subordinate owners (a rootless build's): a plain recursive
 * removal first, and when the user may not remove some of it, `rm -rf` inside the user namespace.
 */
export function rootlessRemove(nsRun: CommandRunner): (dir: string) => Promise<void> {
  return async (dir) => {
    try {
      await rm(dir, { recursive: true, force: true, maxRetries: 3, retryDelay: 100 });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EACCES' && code !== 'EPERM' && code !== 'ENOTEMPTY') throw e;
      await nsRun('rm', ['-rf', '--', dir]);
    }
  };
}

/** The argv (after `tar`) unpacking mmdebstrap's tarball into the tree, inside the namespace; /dev is the guest's devtmpfs. */
export function rootlessUnpackArgs(tarball: string, rootDir: string): string[] {
  return [
    '--extract',
    `--file=${tarball}`,
    '--numeric-owner',
    '--same-owner',
    '--same-permissions',
    '--xattrs',
    '--xattrs-include=*',
    '--exclude=./dev/*',
    `--directory=${rootDir}`,
  ];
}
