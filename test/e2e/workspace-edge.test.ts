/**
 * Workspace edge cases on a real QEMU VM: a repository without commits, a detached HEAD, a
 * submodule, `mise exec` only where a mise config applies (for `vm exec` and sessions), `vm stop` while a long import is streaming, and commands meant for a workspace removed in the guest. One VM is shared; the steps run in
 * order, each with its own guest path.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLI, E2E_HOME, banger, bangerOk, type CliResult, e2eSteps } from '../helpers/cli.js';
import { copyTree, git, isolateGitConfig, tmp, write } from '../helpers/workspace-repo.js';

const VM = 'e2e-ws-edge';
const { step, printConsolesIfFailed } = e2eSteps();

interface Workspace {
  guestPath: string;
  sourcePath: string;
  headCommit: string | null;
  baseCommit: string;
}
interface Vm {
  name: string;
  state: string;
  workspace: Workspace | null;
}

async function show(): Promise<Vm> {
  return JSON.parse((await bangerOk(['vm', 'show', VM, '--json'])).stdout) as Vm;
}

async function guest(dir: string, script: string, want = 0): Promise<string> {
  return (await bangerOk(['vm', 'exec', VM, '-w', dir, '--', 'sh', '-c', script], want)).stdout;
}

function newRepo(prefix: string): string {
  const root = join(tmp(prefix), 'repo');
  mkdirSync(root);
  git(root, 'init', '-q', '-b', 'main');
  return root;
}

/** A new repository with `files` (path -> content) in one commit. */
function committedRepo(prefix: string, files: Record<string, string>): string {
  const root = newRepo(prefix);
  for (const [path, content] of Object.entries(files)) write(root, path, content);
  git(root, 'add', '-A');
  git(root, 'commit', '-q', '-m', 'files');
  return root;
}

/** Starts `banger ARGS` in the background; `started` resolves once its stderr matches `ready`. */
function bangerBackground(args: string[], ready: RegExp): { started: Promise<void>; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, BANGER_HOME: E2E_HOME, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let onReady!: () => void;
  const started = new Promise<void>((res) => (onReady = res));
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    if (ready.test(stderr)) onReady();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
  const done = new Promise<CliResult>((res, rej) => {
    child.on('error', rej);
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      onReady();
      res({ code: code ?? (sig ? 137 : 1), stdout, stderr });
    });
  });
  return { started, done };
}

/** Temporary directories of imports (pack.ts) holding a history pack over 60 MB. */
function bigImportTemps(): string[] {
  return readdirSync(tmpdir())
    .filter((n) => n.startsWith('banger-import-'))
    .filter((n) => {
      try {
        return statSync(join(tmpdir(), n, 'history.pack')).size > 60 << 20;
      } catch {
        return false;
      }
    });
}

void describe('workspace edge cases on a real VM', { timeout: 900_000 }, () => {
  before(async () => {
    isolateGitConfig();
    await banger(['vm', 'delete', '--force', VM]);
    await bangerOk(['vm', 'run', '--name', VM, '--', 'true']);
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', VM]);
  });


  step('a repository without commits imports as one without commits, and its export applies on the host', async () => {
    const repo = newRepo('banger-ws-empty-');
    write(repo, 'staged.txt', 'staged, never committed\n');
    git(repo, 'add', 'staged.txt');
    const dir = '/root/no-commits';
    const r = await bangerOk(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', dir, '--json']);
    assert.equal((JSON.parse(r.stdout) as { workspace: Workspace }).workspace.headCommit, null);
    assert.equal(
      await guest(
        dir,
        // The guest index equals HEAD (here: empty), as after every import; the staged file is untracked there.
        'git rev-parse --is-inside-work-tree; git symbolic-ref HEAD; git rev-parse -q --verify HEAD || echo no-commits; git ls-files; cat staged.txt; git status --porcelain',
      ),
      'true\nrefs/heads/main\nno-commits\nstaged, never committed\n?? staged.txt\n',
    );
    await guest(dir, "printf 'made in the guest\\n' > guest.txt && echo more >> staged.txt");
    const patch = join(tmp('banger-ws-empty-patch-'), 'p.patch');
    await bangerOk(['vm', 'workspace', 'export', VM, '--output', patch]);
    const copy = join(tmp('banger-ws-empty-copy-'), 'c');
    copyTree(repo, copy);
    execFileSync('git', ['apply', patch], { cwd: copy });
    assert.equal(readFileSync(join(copy, 'guest.txt'), 'utf8'), 'made in the guest\n');
    assert.equal(readFileSync(join(copy, 'staged.txt'), 'utf8'), 'staged, never committed\nmore\n');
  });

  step('a detached HEAD is detached at the same commit in the guest', async () => {
    const repo = newRepo('banger-ws-detached-');
    write(repo, 'a.txt', 'one\n');
    git(repo, 'add', '-A');
    git(repo, 'commit', '-q', '-m', 'one');
    write(repo, 'a.txt', 'two\n');
    git(repo, 'commit', '-q', '-am', 'two');
    git(repo, 'checkout', '-q', '--detach', 'HEAD~1');
    const head = git(repo, 'rev-parse', 'HEAD').trim();
    const dir = '/root/detached';
    await bangerOk(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', dir]);
    assert.equal(
      await guest(
        dir,
        'git symbolic-ref -q HEAD || echo detached; git rev-parse HEAD; cat a.txt; git status --porcelain',
      ),
      `detached\n${head}\none\n`,
    );
    assert.equal((await show()).workspace?.headCommit, head);
  });

  step('a submodule is an empty directory with a notice, and export never touches it', async () => {
    const sub = newRepo('banger-ws-sub-');
    write(sub, 'inside.txt', 'submodule file\n');
    git(sub, 'add', '-A');
    git(sub, 'commit', '-q', '-m', 'sub');
    const repo = newRepo('banger-ws-super-');
    write(repo, 'README.md', 'super\n');
    git(repo, 'add', '-A');
    git(repo, 'commit', '-q', '-m', 'super');
    git(repo, '-c', 'protocol.file.allow=always', 'submodule', 'add', '-q', sub, 'sub');
    git(repo, 'commit', '-q', '-m', 'add submodule');
    const dir = '/root/with-submodule';
    const r = await bangerOk(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', dir]);
    assert.match(r.stderr, /submodules are imported as empty directories, without their contents: sub$/m);
    assert.equal(await guest(dir, 'test -d sub && find sub -mindepth 1 | wc -l; git status --porcelain'), '0\n');
    await guest(dir, 'echo guest > sub/made-in-guest.txt && echo guest >> README.md');
    const names = await bangerOk(['vm', 'workspace', 'export', VM, '--name-only']);
    assert.equal(names.stdout, 'README.md\n');
    const patch = join(tmp('banger-ws-sub-patch-'), 'p.patch');
    await bangerOk(['vm', 'workspace', 'export', VM, '--output', patch]);
    assert.doesNotMatch(readFileSync(patch, 'utf8'), /sub\//);
    execFileSync('git', ['apply', '--check', patch], { cwd: repo });
  });

  step("vm exec runs under mise exec where the repo has a mise config (the guest's own included), directly elsewhere", async () => {
    // `mise exec` gives its command __MISE_DIFF (mise's own variable) and the config's [env].
    const probe = ['sh', '-c', 'echo "${BANGER_MISE_PROBE:-none} ${__MISE_DIFF:+mise}"'];
    const plain = committedRepo('banger-ws-plain-', { 'a.txt': 'a\n' });
    await bangerOk(['vm', 'workspace', 'prepare', VM, plain, '--guest-path', '/root/no-mise']);
    assert.equal((await bangerOk(['vm', 'exec', VM, '--', ...probe])).stdout, 'none \n');
    // A config the guest writes later (as `mise use` would) applies from the next command on.
    await guest('/root/no-mise', 'printf \'[env]\\nBANGER_MISE_PROBE = "guest-made"\\n\' > mise.toml && mise trust --quiet mise.toml');
    assert.equal((await bangerOk(['vm', 'exec', VM, '--', ...probe])).stdout, 'guest-made mise\n');

    const withMise = committedRepo('banger-ws-mise-', { 'mise.toml': '[env]\nBANGER_MISE_PROBE = "from-mise"\n' });
    await bangerOk(['vm', 'workspace', 'prepare', VM, withMise, '--guest-path', '/root/with-mise']);
    assert.equal((await bangerOk(['vm', 'exec', VM, '--', ...probe])).stdout, 'from-mise mise\n');
  });

  step('a session runs where and as `vm exec` does: in the workspace, as a root login, under mise exec where its config applies', async () => {
    // Sessions used to start in / with HOME=/ (the agent's own environment): a coding agent saw neither the
    // repository nor root's git identity and config.
    const probe = ['sh', '-c', 'echo "$(pwd) $HOME $USER $LANG ${BANGER_MISE_PROBE:-none} ${__MISE_DIFF:+mise}"'];
    const output = async (name: string, ...start: string[]) => {
      await bangerOk(['vm', 'session', 'start', VM, '--name', name, ...start, '--', ...probe]);
      for (let i = 0; ; i++) {
        const s = JSON.parse((await bangerOk(['vm', 'session', 'show', VM, name, '--json'])).stdout) as { state: string; argv: string[] };
        if (s.state !== 'running') {
          assert.deepEqual(s.argv, probe, 'the session shows the command as given');
          break;
        }
        assert.ok(i < 120, `${name} did not end`);
        await sleep(500);
      }
      const out = (await bangerOk(['vm', 'session', 'logs', VM, name])).stdout;
      await bangerOk(['vm', 'session', 'rm', VM, name]);
      return out;
    };
    assert.equal(await output('in-ws'), '/root/with-mise /root root C.UTF-8 from-mise mise\n');
    assert.equal(await output('in-tmp', '--cwd', '/tmp'), '/tmp /root root C.UTF-8 none \n');
    // A relative directory is taken from the workspace, for sessions and `vm exec -w` alike.
    assert.equal(await output('up', '--cwd', '..'), '/root /root root C.UTF-8 none \n');
    assert.equal((await bangerOk(['vm', 'exec', VM, '-w', '..', '--', 'pwd'])).stdout, '/root\n');
  });

  step('vm stop during a long import returns promptly, the prepare fails clearly and records nothing', async (t) => {
    const repo = newRepo('banger-ws-big-');
    for (let i = 0; i < 40; i++) write(repo, `blobs/${String(i).padStart(2, '0')}.bin`, randomBytes(2 << 20));
    write(repo, 'README.md', 'big\n');
    git(repo, 'add', '-A');
    git(repo, 'commit', '-q', '-m', 'big');
    const before = (await show()).workspace;
    const dir = '/root/big';
    const prep = bangerBackground(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', dir], /import: /);
    await prep.started;
    await sleep(500);
    const t0 = Date.now();
    const stop = await banger(['vm', 'stop', VM], { timeoutMs: 120_000 });
    const stopMs = Date.now() - t0;
    assert.equal(stop.code, 0, stop.stderr);
    assert.ok(stopMs < 15_000, `vm stop took ${stopMs} ms`);
    const r = await Promise.race([prep.done, sleep(60_000).then(() => null)]);
    assert.ok(r, 'the prepare ended after the VM stopped');
    t.diagnostic(
      `vm stop took ${stopMs} ms; the prepare ended ${Date.now() - t0} ms after the stop began: ${r.stderr.trim().split('\n').slice(-2).join(' | ')}`,
    );
    assert.notEqual(r.code, 0, 'the prepare failed');
    assert.doesNotMatch(r.stderr, /imported .* into/);
    assert.match(r.stderr, new RegExp(`VM '${VM}' stopped during the workspace import`), r.stderr);
    // The daemon removed its temporary history pack (this repo's is the only one over 60 MB).
    let leftovers: string[] = [];
    for (let i = 0; i < 50; i++) {
      leftovers = bigImportTemps();
      if (leftovers.length === 0) break;
      await sleep(100);
    }
    assert.deepEqual(leftovers, [], 'no temporary import files are left behind');
    const vm = await show();
    assert.equal(vm.state, 'stopped');
    assert.deepEqual(vm.workspace, before, 'the workspace record is the one from before the import');

    // The guest path is usable again once the VM is back.
    await bangerOk(['vm', 'start', VM]);
    const small = committedRepo('banger-ws-small-', { 'small.txt': 'small\n' });
    await bangerOk(['vm', 'workspace', 'prepare', VM, small, '--guest-path', dir]);
    assert.equal(await guest(dir, 'ls -A'), '.git\nsmall.txt\n');
    assert.equal((await show()).workspace?.guestPath, dir);
  });

  step('a command meant for a workspace removed in the guest runs nowhere else and says what to do', async () => {
    const dir = '/root/removed ws';
    const small = committedRepo('banger-ws-removed-', { 'small.txt': 'small\n' });
    await bangerOk(['vm', 'workspace', 'prepare', VM, small, '--guest-path', dir]);
    await bangerOk(['vm', 'exec', VM, '-w', '/', '--', 'rm', '-rf', dir]);
    const exec = await banger(['vm', 'exec', VM, '--', 'pwd']);
    assert.equal(exec.code, 2, exec.stderr);
    assert.equal(exec.stdout, '');
    assert.match(exec.stderr, new RegExp(`^banger: the workspace ${dir} is not in the guest any more: import it again with \`banger vm workspace prepare VM REPO\``));
    const session = await banger(['vm', 'session', 'start', VM, '--', 'cat']);
    assert.equal(session.code, 65, session.stderr);
    assert.match(session.stderr, new RegExp(`error: the workspace ${dir} of VM ${VM} is not in the guest any more\nhint: import it again with \`banger vm workspace prepare ${VM} REPO\`, or start the session elsewhere with --cwd DIR`));
    await bangerOk(['vm', 'workspace', 'prepare', VM, small, '--guest-path', dir]);
    assert.equal((await bangerOk(['vm', 'exec', VM, '--', 'cat', 'small.txt'])).stdout, 'small\n');
  });
});
