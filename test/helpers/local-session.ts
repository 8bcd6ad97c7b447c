import { spawn } from 'node:child_process';
import type { GuestExecOptions, GuestExecResult, GuestSession } from '../../src/daemon/guest/session.js';
import type { WorkspaceInfo } from '../../src/protocol/workspace.js';
import { WorkspaceService } from '../../src/daemon/services/workspace/service.js';
import type { VmService } from '../../src/daemon/services/vm/service.js';
import type { VmRecord, VmRepo } from '../../src/daemon/store/repos/vms.js';
import { runCommand, type CommandRunner } from '../../src/shared/command.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from './scratch.js';

/**
 * A GuestSession that runs each command with this host's /bin/sh (or `shell`), standing in for a guest in unit
 * tests of guest scripts. Guest paths are ordinary host paths (tests put them under a temp "guest root").
 */
export class LocalShellSession implements GuestSession {
  constructor(private readonly base: { env?: Record<string, string>; cwd?: string; shell?: string } = {}) {}

  exec(command: string, opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.base.shell ?? '/bin/sh', ['-c', command], {
        cwd: this.base.cwd ?? '/',
        env: { ...process.env, PATH: guestLikePath(), ...this.base.env, ...opts.env },
        stdio: ['pipe', 'pipe', 'pipe'],
        signal: opts.signal,
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      if (opts.stdout) child.stdout.pipe(opts.stdout, { end: false });
      else child.stdout.on('data', (d: Buffer) => out.push(d));
      if (opts.stderr) child.stderr.pipe(opts.stderr, { end: false });
      else child.stderr.on('data', (d: Buffer) => err.push(d));
      // The command may exit without reading all of stdin: that is its business, not an error here.
      child.stdin.on('error', () => undefined);
      if (opts.stdin) {
        opts.stdin.on('error', (e) => child.stdin.destroy(e));
        opts.stdin.pipe(child.stdin);
      } else child.stdin.end();
      child.on('error', reject);
      child.on('close', (code, sig) => {
        opts.stdin?.unpipe(child.stdin);
        // Like the SSH session: a command that ended stops its input stream (and whatever feeds it).
        opts.stdin?.destroy();
        resolve({
          code: code ?? 128 + (sig === 'SIGKILL' ? 9 : sig === 'SIGTERM' ? 15 : 1),
          stdout: Buffer.concat(out),
          stderr: Buffer.concat(err),
        });
      });
    });
  }
}

/**
 * The host PATH without node_modules/.bin: `npm test` puts the project's own mise binary there, and the
 * "guest" of these tests must only see what the test installs in it.
 */
function guestLikePath(): string {
  return (process.env.PATH ?? '/usr/bin:/bin')
    .split(':')
    .filter((p) => !p.includes('node_modules'))
    .join(':');
}

/**
 * A real WorkspaceService whose one VM, `vm` (directory `dir`), is always running and whose "guest" is this
 * host's shell (LocalShellSession); the VM record lives in memory. `onExec` sees each command the service runs
 * in the "guest", before it starts.
 */
export function localWorkspaceService(
  dir: string,
  onExec?: (command: string, opts: GuestExecOptions) => void,
  /** Runs the host's commands (git): runCommand unless a test wraps it. */
  run: CommandRunner = runCommand,
): { vm: VmRecord & { workspace: WorkspaceInfo | null }; svc: WorkspaceService } {
  const vm = { id: 'vm1', name: 'vm', dir, accel: 'kvm', workspace: null as WorkspaceInfo | null } as VmRecord & { workspace: WorkspaceInfo | null };
  const shell = new LocalShellSession();
  const session = {
    isClosed: false,
    exec: (command: string, opts: GuestExecOptions = {}) => {
      onExec?.(command, opts);
      return shell.exec(command, opts);
    },
  };
  const vms = {
    get: () => vm,
    runningUnderLock: () => Promise.resolve({ ...vm }),
    guest: { transferSession: () => Promise.resolve(session) },
  } as unknown as VmService;
  const repo = { update: (_id: string, p: { workspace: WorkspaceInfo }) => (vm.workspace = p.workspace) } as unknown as VmRepo;
  return { vm, svc: new WorkspaceService({ vms, repo, run, log: silentLogger(), tmpDir: scratchDir('banger-ws-tmp-') }) };
}
