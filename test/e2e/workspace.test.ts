/**
 * Workspaces on real QEMU VMs: import a host checkout (vm run REPO and vm workspace prepare), work
 * in the guest, export a patch that `git apply` turns into the same tree on the host; untracked
 * files only on request; --dry-run without a daemon; dirty detection; the record survives a daemon
 * kill -9; concurrent prepares are serialised. One VM is shared: the steps run in order and each
 * uses its own guest path where that keeps them independent.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { E2E_HOME, banger, bangerOk, e2eSteps } from '../helpers/cli.js';
import { copyTree, git, isolateGitConfig, makeFixtureRepo, tmp, write } from '../helpers/workspace-repo.js';

const VM = 'e2e-ws-a';
const { step, printConsolesIfFailed } = e2eSteps();
let repo = '';
let guest = '';

interface Workspace {
  guestPath: string;
  sourcePath: string;
  headCommit: string | null;
  baseCommit: string;
  includeUntracked: boolean;
  preparedAt: string;
}
interface Vm {
  name: string;
  workspace: Workspace | null;
}

async function show(name: string): Promise<Vm> {
  return JSON.parse((await bangerOk(['vm', 'show', name, '--json'])).stdout) as Vm;
}

/** `git ls-tree -r` of the working tree as git would record it (tracked + untracked, not ignored): modes, blob ids, names. */
const TREE_LISTING = 'i=$(mktemp); cp .git/index "$i"; GIT_INDEX_FILE="$i" git add -A; t=$(GIT_INDEX_FILE="$i" git write-tree); rm -f "$i"; git ls-tree -r -z "$t"';

async function guestListing(dir: string): Promise<string> {
  return (await bangerOk(['vm', 'exec', VM, '-w', dir, '--', 'sh', '-c', TREE_LISTING])).stdout;
}

function hostListing(dir: string): string {
  return execFileSync('sh', ['-c', TREE_LISTING], { cwd: dir, encoding: 'utf8' });
}

async function guestHas(path: string): Promise<boolean> {
  const r = await banger(['vm', 'exec', VM, '--', 'test', '-e', path]);
  return r.code === 0;
}

void describe('workspaces on real VMs', { timeout: 600_000 }, () => {
  before(async () => {
    isolateGitConfig();
    repo = makeFixtureRepo();
    guest = `/root/${basename(repo)}`;
    await banger(['vm', 'delete', '--force', VM]);
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', VM]);
  });


  step('--dry-run lists files with modes and sizes, with no daemon and no VM', async () => {
    const home = tmp('banger-ws-dryrun-');
    try {
      const r = await bangerOk(['vm', 'workspace', 'prepare', 'nope', repo, '--dry-run'], 0, { home });
      assert.match(r.stdout, /^100755 +19 bin\/run\.sh$/m);
      assert.match(r.stdout, /^120000 +0 link-to-readme -> README\.md$/m);
      assert.match(r.stdout, /^100644 +\d+ ünïcödé\/файл 名前\.txt$/m);
      assert.match(r.stdout, /^12 entries, 3\.0 MiB \(\d+ bytes\)$/m);
      assert.doesNotMatch(r.stdout, /\.env|debug\.log|node_modules/);
      assert.match(r.stderr, /4 untracked files were not imported: pass --include-untracked/);
      assert.equal(existsSync(join(home, 'bangerd.sock')), false, 'no daemon was started');
      const withUntracked = await bangerOk(['vm', 'run', repo, '--dry-run', '--include-untracked'], 0, { home });
      assert.match(withUntracked.stdout, /^100644 +9 \.env \(untracked\)$/m);
      assert.equal(existsSync(join(home, 'bangerd.sock')), false, 'no daemon was started');
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
    const before = (await bangerOk(['vm', 'list', '--json'])).stdout;
    await bangerOk(['vm', 'run', '--name', VM, repo, '--dry-run']);
    assert.equal((await bangerOk(['vm', 'list', '--json'])).stdout, before, 'vm run --dry-run creates no VM');
  });

  step('a directory that is not a git checkout gets a clear error', async () => {
    const plain = tmp('banger-ws-plain-');
    for (const args of [
      ['vm', 'workspace', 'prepare', VM, plain, '--dry-run'],
      ['vm', 'run', plain, '--dry-run'],
    ]) {
      const r = await banger(args);
      assert.equal(r.code, 64, r.stderr);
      assert.match(r.stderr, /is not a git repository: run `git init` there, or pass a git checkout/);
    }
  });

  step('vm run REPO imports tracked files and edits, not untracked or ignored ones, and runs the command there', async () => {
    const r = await banger(['vm', 'run', '--name', VM, repo, '--', 'sh', '-c', 'pwd; git rev-parse HEAD; exit 5']);
    assert.equal(r.code, 5, r.stderr);
    assert.equal(r.stdout, `${guest}\n${git(repo, 'rev-parse', 'HEAD')}`);
    assert.match(r.stderr, /^4 untracked files were not imported: pass --include-untracked to import them/m);
    for (const p of ['.env', '.envrc.private', '.env.local', 'notes/todo.txt', 'debug.log', 'node_modules']) {
      assert.equal(await guestHas(`${guest}/${p}`), false, `${p} is not in the guest`);
    }
    const gl = await guestListing(guest);
    const copy = join(tmp('banger-ws-copy-'), 'c');
    copyTree(repo, copy);
    git(copy, 'clean', '-fdq');
    assert.equal(gl, hostListing(copy), 'the guest tree equals the host working tree');
    const status = await bangerOk(['vm', 'exec', VM, '--', 'git', 'status', '--porcelain']);
    assert.match(status.stdout, /^ M README\.md$/m, 'the uncommitted host edit shows as one in the guest');
    const ws = (await show(VM)).workspace;
    assert.equal(ws?.guestPath, guest);
    assert.equal(ws?.sourcePath, repo);
    assert.equal(ws?.headCommit, git(repo, 'rev-parse', 'HEAD').trim());
    const ps = await bangerOk(['ps']);
    assert.match(ps.stdout, /WORKSPACE/);
    assert.ok(ps.stdout.includes(guest));
  });

  step('changes made in the guest export as a patch that git apply reproduces on the host', async () => {
    await bangerOk([
      'vm', 'exec', VM, '--', 'sh', '-c',
      [
        'echo guest >> README.md',
        'git rm -q bin/run.sh',
        'chmod +x data/blob.bin',
        "printf '\\000\\001\\377new' > new.bin",
        'git add -A',
        'git commit -qm "guest commit"',
        'echo uncommitted >> a/b/keep.txt',
        'rm "ünïcödé/файл 名前.txt"',
        `echo x > "dir with space/it's new.txt"`,
      ].join(' && '),
    ]);
    const out = join(tmp('banger-ws-patch-'), 'p.patch');
    const r = await bangerOk(['vm', 'workspace', 'export', VM, '--output', out]);
    assert.match(r.stderr, /^D\tbin\/run\.sh$/m);
    assert.match(r.stderr, /^A\tnew\.bin$/m);
    assert.match(r.stderr, /^M\tdata\/blob\.bin$/m);
    const toStdout = await bangerOk(['vm', 'workspace', 'export', VM]);
    assert.equal(toStdout.stdout, readFileSync(out, 'utf8'), 'stdout and --output carry the same patch');
    const names = await bangerOk(['vm', 'workspace', 'export', VM, '--name-only']);
    assert.ok(names.stdout.split('\n').includes("dir with space/it's new.txt"));

    const copy = join(tmp('banger-ws-apply-'), 'c');
    copyTree(repo, copy);
    git(copy, 'clean', '-fdq');
    execFileSync('git', ['apply', out], { cwd: copy });
    assert.equal(hostListing(copy), await guestListing(guest), 'host copy + patch == guest tree');
  });

  step("--include-untracked brings untracked files (never ignored ones) to a guest path with an apostrophe", async () => {
    const dir = "/root/it's untracked";
    const r = await bangerOk(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', dir, '--include-untracked', '--json']);
    const res = JSON.parse(r.stdout) as { workspace: Workspace; skippedUntracked: number };
    assert.equal(res.workspace.guestPath, dir);
    assert.equal(res.skippedUntracked, 0);
    assert.doesNotMatch(r.stderr, /untracked files were not imported/);
    const env = await bangerOk(['vm', 'exec', VM, '--', 'cat', '.env', '.envrc.private', '.env.local', 'notes/todo.txt']);
    assert.equal(env.stdout, 'SECRET=1\nexport TOKEN=2\nLOCAL=3\ntodo\n', 'exec runs in the new workspace');
    assert.equal(await guestHas(`${dir}/debug.log`), false);
    assert.equal(await guestHas(`${dir}/node_modules`), false);
    const copy = join(tmp('banger-ws-untracked-'), 'c');
    copyTree(repo, copy);
    assert.equal(await guestListing(dir), hostListing(copy));
  });

  step('a host HEAD that moved is reported by vm exec, and --auto-prepare imports it again', async () => {
    const old = git(repo, 'rev-parse', 'HEAD').trim();
    write(repo, 'later.txt', 'later\n');
    git(repo, 'add', 'later.txt');
    git(repo, 'commit', '-q', '-m', 'later');
    const now = git(repo, 'rev-parse', 'HEAD').trim();
    const warned = await bangerOk(['vm', 'exec', VM, '--', 'true']);
    assert.match(warned.stderr, /warning:/);
    assert.ok(warned.stderr.includes(old.slice(0, 12)) && warned.stderr.includes(now.slice(0, 12)), warned.stderr);
    assert.match(warned.stderr, /--auto-prepare/);
    const auto = await bangerOk(['vm', 'exec', VM, '--auto-prepare', '--', 'cat', 'later.txt']);
    assert.equal(auto.stdout, 'later\n');
    assert.equal((await show(VM)).workspace?.headCommit, now);
    const quiet = await bangerOk(['vm', 'exec', VM, '--', 'true']);
    assert.doesNotMatch(quiet.stderr, /warning/);
  });

  step('kill -9 of bangerd keeps the workspace record', async () => {
    const before = (await show(VM)).workspace;
    assert.ok(before);
    const pid = Number(readFileSync(join(E2E_HOME, 'bangerd.pid'), 'utf8').trim());
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 50 && existsSync(`/proc/${pid}`); i++) await sleep(100);
    assert.deepEqual((await show(VM)).workspace, before);
    const r = await bangerOk(['vm', 'exec', VM, '--', 'pwd']);
    assert.equal(r.stdout, `${before.guestPath}\n`);
  });

  step('two prepares of one VM at once both succeed, one after the other', async () => {
    const dir = '/root/concurrent';
    const [a, b] = await Promise.all([
      banger(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', dir]),
      banger(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', dir]),
    ]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    const st = await bangerOk(['vm', 'exec', VM, '--', 'sh', '-c', 'git status --porcelain | grep -c "^ M README.md$"; ls -a | grep -c banger-import || true']);
    assert.equal(st.stdout, '1\n0\n', 'one clean import, no staging leftovers');
  });

  step('export without a workspace, or with a bad base, is a clear error', async () => {
    const bad = await banger(['vm', 'workspace', 'export', VM, '--base-commit', 'no-such-ref']);
    assert.equal(bad.code, 64, bad.stderr);
    assert.match(bad.stderr, /no-such-ref does not name a commit/);
    const plain = await banger(['vm', 'workspace', 'prepare', VM, tmp('banger-ws-plain-')]);
    assert.equal(plain.code, 64, plain.stderr);
    assert.match(plain.stderr, /is not a git repository: run `git init` there/);
    const gone = await banger(['vm', 'workspace', 'export', 'e2e-ws-none']);
    assert.equal(gone.code, 65);
  });
});
