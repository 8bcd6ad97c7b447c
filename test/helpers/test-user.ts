/**
 * Normal users that e2e tests create (as root) to run banger without root: each gets subordinate ids from
 * a free range (for rootless image builds), a 0700 home and a banger config with a boot allowance for a
 * loaded TCG host; commands run as the user through runuser with a clean environment. `removeTestUser`
 * deletes the user's VMs, stops its daemon, waits for its processes to end, removes what it left in /tmp
 * and deletes the user.
 */
import { spawn, spawnSync } from 'node:child_process';
import { lstatSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLI, REPO_ROOT } from './cli.js';

export interface UserResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Where a test user finds this checkout. Here, when other users can read it; otherwise (a clone under /root,
 * whose parent directories are private) the same files bind-mounted at CHECKOUT_VIEW, in a mount namespace of
 * each command's own (nothing is mounted on the host, and nothing is left mounted when a test is killed).
 */
const CHECKOUT_VIEW = '/run/banger-test-checkout';
let viewNeeded: boolean | undefined;

function needsView(): boolean {
  viewNeeded ??=
    process.getuid?.() === 0 &&
    spawnSync(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(CLI)})`], { uid: 65534, gid: 65534 }).status !== 0;
  return viewNeeded;
}

/** A path of this checkout as a test user sees it (other paths unchanged). */
export function asSeenByUser(p: string): string {
  if (!needsView() || (p !== REPO_ROOT && !p.startsWith(`${REPO_ROOT}/`))) return p;
  return CHECKOUT_VIEW + p.slice(REPO_ROOT.length);
}

/** The command (file and arguments) that runs `argv` in `cwd`, where this checkout is visible to other users. */
function inView(argv: string[], cwd: string): { file: string; args: string[]; cwd: string } {
  if (!needsView()) return { file: argv[0]!, args: argv.slice(1), cwd };
  const script = 'mkdir -p "$1" && mount --bind "$2" "$1" && cd "$3" && shift 3 && exec "$@"';
  return {
    file: 'unshare',
    args: ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', CHECKOUT_VIEW, REPO_ROOT, asSeenByUser(cwd), ...argv],
    cwd: '/',
  };
}

/**
 * Why tests that create users cannot run here, or null: they need root, useradd/runuser/newuidmap, and
 * every path in `readable` (default: the built CLI) readable by another user, through a bind mount of the
 * checkout when its parent directories are private.
 */
export function cannotRunAsTestUser(readable: string[] = [CLI]): string | null {
  if (process.getuid?.() !== 0) return 'needs root, to create the test users';
  if (spawnSync('which', ['useradd', 'runuser', 'newuidmap', 'unshare']).status !== 0) return 'needs useradd, runuser, unshare and uidmap';
  for (const p of readable) {
    const seen = asSeenByUser(p);
    const c = inView(['runuser', '-u', 'nobody', '--', process.execPath, '-e', `require('fs').accessSync(${JSON.stringify(seen)})`], '/');
    if (spawnSync(c.file, c.args, { cwd: c.cwd }).status !== 0) return `other users cannot read ${p} (${seen}): its files are private`;
  }
  return null;
}

/** When each user of this process was created (ms since the epoch), for `removeTestUser`'s /tmp cleanup. */
const created = new Map<string, number>();

/** The first free block of subordinate ids after every one already given out (at least 300000). */
function freeSubidStart(): number {
  let end = 300000;
  for (const f of ['/etc/subuid', '/etc/subgid']) {
    let text = '';
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const l of text.split('\n')) {
      const [, s, c] = l.split(':');
      if (s && c) end = Math.max(end, Number(s) + Number(c));
    }
  }
  return end;
}

export const userHome = (user: string): string => `/home/${user}`;

/** banger's state directory of `user` (its default: `$XDG_DATA_HOME/banger`, unset XDG_DATA_HOME). */
export const userBangerHome = (user: string): string => `${userHome(user)}/.local/share/banger`;

/**
 * Creates `user` (a leftover of an earlier run is removed first) with 65536 subordinate uids and gids of
 * its own, a 0700 home, and `{"boot":{"timeoutSeconds":600}}` as its banger config. Returns its uid.
 */
export function createTestUser(user: string): number {
  spawnSync('userdel', ['-r', '-f', user]);
  created.set(user, Date.now() - 1000);
  const r = spawnSync('useradd', ['-m', '-s', '/bin/bash', user], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`useradd ${user}: ${r.stderr}`);
  const start = freeSubidStart();
  const range = `${start}-${start + 65535}`;
  const m = spawnSync('usermod', ['--add-subuids', range, '--add-subgids', range, user], { encoding: 'utf8' });
  if (m.status !== 0) throw new Error(`usermod ${user}: ${m.stderr}`);
  spawnSync('chmod', ['700', userHome(user)]);
  // A loaded host under TCG boots slowly: the same boot allowance for every test user's daemon.
  const cfg = spawnSync(
    'runuser',
    ['-u', user, '--', 'sh', '-c', `umask 077 && mkdir -p "$HOME/.local/share/banger" && echo '{"boot":{"timeoutSeconds":600}}' > "$HOME/.local/share/banger/config.json"`],
    { encoding: 'utf8', env: { ...process.env, HOME: userHome(user) } },
  );
  if (cfg.status !== 0) throw new Error(`banger config of ${user}: ${cfg.stderr}`);
  return Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim());
}

export interface RunAsOptions {
  timeoutMs?: number;
  /** Working directory (default `/`). */
  cwd?: string;
  /** Variables added to the clean environment (HOME, USER, LOGNAME, PATH, NO_COLOR). */
  env?: Record<string, string>;
  /** Called with each chunk of output as it comes (e.g. to stream a long run into the test's log). */
  onOutput?: (stream: 'stdout' | 'stderr', chunk: string) => void;
}

/**
 * Runs `cmd` as `user` (runuser: its own groups, its home); paths of this checkout in `cmd` and `cwd` are
 * given as the user sees them (asSeenByUser). The environment is built from nothing (`env -i`),
 * so nothing of the test's own leaks in (not even NODE_TEST_CONTEXT, which would turn a nested `node --test`
 * into a child of this one).
 */
export function runAs(user: string, cmd: string[], opts: RunAsOptions = {}): Promise<UserResult> {
  const home = userHome(user);
  const vars = { HOME: home, USER: user, LOGNAME: user, PATH: '/usr/local/bin:/usr/bin:/bin', NO_COLOR: '1', ...opts.env };
  const env = ['env', '-i', ...Object.entries(vars).map(([k, v]) => `${k}=${v}`)];
  const c = inView(['runuser', '-u', user, '--', ...env, ...cmd.map(asSeenByUser)], opts.cwd ?? '/');
  return new Promise((resolve) => {
    const p = spawn(c.file, c.args, { cwd: c.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      opts.onOutput?.('stdout', d);
    });
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      opts.onOutput?.('stderr', d);
    });
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 30 * 60_000);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code: code ?? 1, stdout, stderr });
    });
  });
}

/** The built CLI as `user`, with its default state directory. */
export const bangerAs = (user: string, args: string[], timeoutMs?: number): Promise<UserResult> =>
  runAs(user, [process.execPath, CLI, ...args], { timeoutMs });

/**
 * Deletes the user's VMs, stops its daemon, waits for its last process and deletes it with its home. Each
 * banger command gets a minute: a daemon that hangs (what a failed test may have left) is killed below with
 * everything else of the user's, so that cleaning up never outlasts the test file's own timeout.
 */
export async function removeTestUser(user: string): Promise<void> {
  const list = await bangerAs(user, ['vm', 'list', '--json'], 60_000).catch(() => undefined);
  if (list?.code === 0)
    for (const v of JSON.parse(list.stdout) as { name: string }[]) await bangerAs(user, ['vm', 'delete', '--force', v.name], 60_000);
  await bangerAs(user, ['daemon', 'stop'], 60_000);
  // `daemon stop` can return before bangerd has exited: wait for the user's last process, so that nothing
  // writes into the home directory while it is removed.
  for (let i = 0; i < 100 && spawnSync('pgrep', ['-u', user]).status === 0; i++) await sleep(100);
  // Whatever still runs as the user (a nested run killed on a timeout leaves its VMMs) ends with it.
  const left = spawnSync('pgrep', ['-u', user], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  for (const pid of left) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  if (left.length) await sleep(500);
  // What the user left in the shared temporary directories (a test's scratch repos, tsx's cache) goes too,
  // so that nothing is inherited by a later user with the same uid. Only entries made since the user was created.
  const uid = Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim());
  const since = created.get(user);
  if (uid > 0 && since !== undefined)
    for (const dir of ['/tmp', '/var/tmp'])
      for (const name of readdirSync(dir)) {
        const p = join(dir, name);
        try {
          const st = lstatSync(p);
          if (st.uid === uid && st.ctimeMs >= since) rmSync(p, { recursive: true, force: true });
        } catch {
          /* gone meanwhile */
        }
      }
  spawnSync('userdel', ['-r', '-f', user]);
  rmSync(userHome(user), { recursive: true, force: true });
}
