/**
 * `banger doctor`'s checks for image builds as a normal user (rootless.ts): user namespaces enabled,
 * newuidmap/newgidmap present and setuid, subordinate ids for the user, and a real namespace started with
 * them. Each failure names the one root command that fixes it.
 */
import type { DoctorCheck } from '../../../protocol/daemon.js';
import type { CommandRunner } from '../../../shared/command.js';
import { subidFixCommand, subordinateRange } from './rootless.js';

export interface RootlessHost {
  /** A file's text, undefined when it cannot be read (a missing sysctl file...). */
  read: (path: string) => Promise<string | undefined>;
  /** mode and owner of a file, undefined when missing. */
  stat: (path: string) => Promise<{ mode: number; uid: number } | undefined>;
  user: { name: string; uid: number; gid: number };
  /** Runs a command in the user namespace image builds use (rootless.ts userNsRunner). */
  userNs: CommandRunner;
}

const NAME = 'rootless builds';

/** The checks, in order; the namespace is only tried when the others pass. */
export async function rootlessChecks(h: RootlessHost, signal?: AbortSignal): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const num = async (p: string) => {
    const t = await h.read(p);
    return t === undefined ? undefined : Number(t.trim());
  };
  const maxNs = await num('/proc/sys/user/max_user_namespaces');
  const clone = await num('/proc/sys/kernel/unprivileged_userns_clone');
  const apparmor = await num('/proc/sys/kernel/apparmor_restrict_unprivileged_userns');
  if (maxNs === 0)
    checks.push({
      name: `${NAME}: user namespaces`,
      status: 'fail',
      detail: 'user.max_user_namespaces is 0: no user namespace can be made',
      fix: 'sudo sysctl -w user.max_user_namespaces=15000 (and set it in /etc/sysctl.d/ to keep it)',
    });
  else if (clone === 0)
    checks.push({
      name: `${NAME}: user namespaces`,
      status: 'fail',
      detail: 'kernel.unprivileged_userns_clone is 0: normal users may not make user namespaces',
      fix: 'sudo sysctl -w kernel.unprivileged_userns_clone=1 (and set it in /etc/sysctl.d/ to keep it)',
    });
  else if (apparmor === 1)
    checks.push({
      name: `${NAME}: user namespaces`,
      status: 'fail',
      detail: 'kernel.apparmor_restrict_unprivileged_userns is 1: AppArmor denies user namespaces to normal users',
      fix: 'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0',
    });
  else
    checks.push({ name: `${NAME}: user namespaces`, status: 'ok', detail: `enabled (max ${maxNs ?? 'unknown'})` });

  const missingHelpers: string[] = [];
  for (const bin of ['newuidmap', 'newgidmap']) {
    const st = await h.stat(`/usr/bin/${bin}`);
    if (!st) missingHelpers.push(`/usr/bin/${bin} is missing`);
    else if (st.uid !== 0 || (st.mode & 0o4000) === 0)
      missingHelpers.push(`/usr/bin/${bin} is not setuid root (mode ${(st.mode & 0o7777).toString(8)})`);
  }
  checks.push(
    missingHelpers.length
      ? {
          name: `${NAME}: newuidmap`,
          status: 'fail',
          detail: missingHelpers.join('; '),
          fix: 'sudo apt-get install uidmap',
        }
      : { name: `${NAME}: newuidmap`, status: 'ok', detail: '/usr/bin/newuidmap and /usr/bin/newgidmap are setuid root' },
  );

  const uids = subordinateRange((await h.read('/etc/subuid')) ?? '', { name: h.user.name, id: h.user.uid });
  const gids = subordinateRange((await h.read('/etc/subgid')) ?? '', { name: h.user.name, id: h.user.gid });
  if (!uids || !gids)
    checks.push({
      name: `${NAME}: subordinate ids`,
      status: 'fail',
      detail: `${h.user.name} has no ${!uids ? 'uid range in /etc/subuid' : 'gid range in /etc/subgid'}`,
      fix: subidFixCommand(h.user.name),
    });
  else if (uids.count < 65536 || gids.count < 65536)
    checks.push({
      name: `${NAME}: subordinate ids`,
      status: 'fail',
      detail: `${h.user.name} has ${Math.min(uids.count, gids.count)} subordinate ids; Debian's packages use ids up to 65534`,
      fix: subidFixCommand(h.user.name),
    });
  else
    checks.push({
      name: `${NAME}: subordinate ids`,
      status: 'ok',
      detail: `uids ${uids.start}-${uids.start + uids.count - 1}, gids ${gids.start}-${gids.start + gids.count - 1}`,
    });

  if (checks.every((c) => c.status === 'ok')) {
    const r = await h.userNs('true', [], { allowFailure: true, signal }).catch((e: unknown) => ({ code: 1, stderr: String(e), stdout: '' }));
    checks.push(
      r.code === 0
        ? { name: `${NAME}: namespace`, status: 'ok', detail: 'a user namespace with the subordinate ids starts' }
        : {
            name: `${NAME}: namespace`,
            status: 'fail',
            detail: `unshare with the subordinate ids failed: ${r.stderr.trim().split('\n')[0] ?? ''}`,
            fix: 'check /etc/subuid, /etc/subgid and that newuidmap is setuid (`ls -l /usr/bin/newuidmap`)',
          },
    );
  }
  return checks;
}
