import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { headCommitOf, headFromFiles } from '../../src/shared/git-head.js';
import { runCommand } from '../../src/shared/command.js';
import { scratchDir } from '../helpers/scratch.js';

const ENV = {
  ...process.env,
  GIT_AUTHOR_NAME: 't',
  GIT_AUTHOR_EMAIL: 't@localhost',
  GIT_COMMITTER_NAME: 't',
  GIT_COMMITTER_EMAIL: 't@localhost',
};
const git = (cwd: string, ...args: string[]) => execFileSync('git', args, { cwd, env: ENV, encoding: 'utf8' }).trim();
const root = scratchDir('banger-git-head-');

function repo(name: string, ...init: string[]): string {
  const dir = join(root, name);
  execFileSync('git', ['init', '-q', '-b', 'main', ...init, dir], { env: ENV });
  return dir;
}

function commit(dir: string, text: string): string {
  writeFileSync(join(dir, 'f.txt'), text);
  git(dir, 'add', 'f.txt');
  git(dir, 'commit', '-q', '-m', text);
  return git(dir, 'rev-parse', 'HEAD');
}

/** What git itself says HEAD's commit is. */
const gitHead = (dir: string) => git(dir, 'rev-parse', '-q', '--verify', 'HEAD^{commit}');

describe("a checkout's HEAD read from its files agrees with git", () => {
  after(() => rmSync(root, { recursive: true, force: true }));

  it('a branch in its own ref file', async () => {
    const dir = repo('loose');
    commit(dir, 'one');
    const two = commit(dir, 'two');
    assert.equal(await headFromFiles(dir), two);
    assert.equal(await headCommitOf(dir, runCommand), gitHead(dir));
  });

  it('a branch only in packed-refs (as after a clone or gc), and a newer own file over a stale packed line', async () => {
    const dir = repo('packed');
    const one = commit(dir, 'one');
    git(dir, 'pack-refs', '--all');
    assert.equal(await headFromFiles(dir), one);
    const two = commit(dir, 'two'); // git writes the ref's own file; packed-refs still says `one`
    assert.equal(await headFromFiles(dir), two);
    assert.equal(two, gitHead(dir));
  });

  it('a detached HEAD, and a branch with slashes', async () => {
    const dir = repo('detached');
    const one = commit(dir, 'one');
    commit(dir, 'two');
    git(dir, 'checkout', '-q', '--detach', one);
    assert.equal(await headFromFiles(dir), one);
    git(dir, 'checkout', '-q', '-b', 'feature/x/y');
    const three = commit(dir, 'three');
    assert.equal(await headFromFiles(dir), three);
    assert.equal(three, gitHead(dir));
  });

  it('sha256 object ids', async () => {
    const dir = repo('sha256', '--object-format=sha256');
    const one = commit(dir, 'one');
    assert.equal(one.length, 64);
    assert.equal(await headFromFiles(dir), one);
  });

  it('leaves to git what it cannot read plainly: a worktree, an unborn branch, no repository', async () => {
    const dir = repo('main-of-worktree');
    commit(dir, 'one');
    const wt = join(root, 'wt');
    git(dir, 'worktree', 'add', '-q', '-b', 'other', wt);
    const other = commit(wt, 'other');
    assert.equal(await headFromFiles(wt), undefined, 'its .git is a file');
    assert.equal(await headCommitOf(wt, runCommand), other);

    const unborn = repo('unborn');
    assert.equal(await headFromFiles(unborn), undefined);
    assert.equal(await headCommitOf(unborn, runCommand), null);

    const plain = join(root, 'plain');
    execFileSync('mkdir', [plain]);
    assert.equal(await headFromFiles(plain), undefined);
    assert.equal(await headCommitOf(plain, runCommand), null);
  });
});
