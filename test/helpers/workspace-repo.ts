import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { scratchDir } from './scratch.js';

/** Keeps the developer's own git config out of the tests. Call once per test file. */
export function isolateGitConfig(): void {
  const dir = scratchDir('banger-gitcfg-');
  const global = join(dir, 'gitconfig');
  writeFileSync(global, '[init]\n\tdefaultBranch = main\n[protocol "file"]\n\tallow = always\n');
  process.env.GIT_CONFIG_GLOBAL = global;
  process.env.GIT_CONFIG_NOSYSTEM = '1';
  for (const k of ['GIT_DIR', 'GIT_WORK_TREE', 'GIT_INDEX_FILE']) delete process.env[k];
}

export function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', args, {
    cwd,
    encoding: 'utf8',
    env: {
      ...process.env,
      GIT_AUTHOR_NAME: 'Test',
      GIT_AUTHOR_EMAIL: 't@example.com',
      GIT_COMMITTER_NAME: 'Test',
      GIT_COMMITTER_EMAIL: 't@example.com',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

export function tmp(prefix: string): string {
  return scratchDir(prefix);
}

export function write(root: string, rel: string, content: string | Buffer, mode?: number): void {
  const abs = join(root, rel);
  mkdirSync(dirname(abs), { recursive: true });
  writeFileSync(abs, content);
  if (mode !== undefined) chmodSync(abs, mode);
}

export function link(root: string, rel: string, target: string): void {
  const abs = join(root, rel);
  mkdirSync(dirname(abs), { recursive: true });
  symlinkSync(target, abs);
}

export const NASTY_NAME = `dir with space/it's "quoted" $(x) \`y\`.txt`;
export const UNICODE_NAME = 'ünïcödé/файл 名前.txt';

/**
 * A checkout with two commits and every kind of content an import must carry: binary data, an
 * executable, relative and absolute symlinks, names with spaces, quotes and non-ASCII, nested
 * directories, ignored files, untracked secrets, and uncommitted edits (modified, chmod'ed, deleted,
 * staged-new).
 */
export function makeFixtureRepo(parentName = `host repo it's`): string {
  const root = join(tmp('banger-host-'), parentName);
  mkdirSync(root, { recursive: true });
  git(root, 'init', '-q', '-b', 'main');
  git(root, 'config', 'user.name', "Ada O'Lovelace");
  git(root, 'config', 'user.email', 'ada@example.com');
  write(root, 'README.md', 'hello\n');
  write(root, '.gitignore', '*.log\nnode_modules/\n');
  write(root, 'bin/run.sh', '#!/bin/sh\necho run\n', 0o755);
  write(root, 'data/blob.bin', Buffer.concat([Buffer.from([0, 1, 2, 255, 0]), randomBytes(3000)]));
  write(root, 'a/b/c/d.txt', 'deep\n');
  write(root, 'a/b/keep.txt', 'keep\n');
  write(root, NASTY_NAME, 'nasty\n');
  write(root, UNICODE_NAME, 'unicode\n');
  link(root, 'link-to-readme', 'README.md');
  link(root, 'a/up-link', '../README.md');
  link(root, 'abs-link', '/etc/hostname');
  git(root, 'add', '-A');
  git(root, 'commit', '-q', '-m', 'first');
  write(root, 'README.md', 'hello\nsecond\n');
  write(root, 'big.bin', randomBytes(3 << 20));
  git(root, 'add', '-A');
  git(root, 'commit', '-q', '-m', 'second');
  // Uncommitted state.
  write(root, 'README.md', 'hello\nsecond\nuncommitted edit\n');
  chmodSync(join(root, 'a/b/keep.txt'), 0o755);
  execFileSync('rm', [join(root, 'a/b/c/d.txt')]);
  write(root, 'staged.txt', 'staged but not committed\n');
  git(root, 'add', 'staged.txt');
  // Ignored.
  write(root, 'debug.log', 'ignored\n');
  write(root, 'node_modules/pkg/index.js', 'ignored\n');
  // Untracked, not ignored.
  write(root, '.env', 'SECRET=1\n');
  write(root, '.envrc.private', 'export TOKEN=2\n');
  write(root, '.env.local', 'LOCAL=3\n');
  write(root, 'notes/todo.txt', 'todo\n');
  return root;
}

/** The tree id git would record for the working tree now (tracked + untracked, not ignored), via a throwaway index. */
export function worktreeTree(root: string): string {
  const idx = join(tmp('banger-idx-'), 'index');
  const gitDir = git(root, 'rev-parse', '--absolute-git-dir').trim();
  try {
    writeFileSync(idx, readFileSync(join(gitDir, 'index')));
  } catch {
    // no index yet
  }
  const env = { ...process.env, GIT_INDEX_FILE: idx };
  execFileSync('git', ['add', '-A'], { cwd: root, env, stdio: 'ignore' });
  return execFileSync('git', ['write-tree'], { cwd: root, env, encoding: 'utf8' }).trim();
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Copies a directory tree as it is (modes, symlinks, .git). */
export function copyTree(from: string, to: string): void {
  mkdirSync(dirname(to), { recursive: true });
  execFileSync('cp', ['-a', '--', from, to]);
}

export function sh(cwd: string, script: string): string {
  return execFileSync('sh', ['-c', script], { cwd, encoding: 'utf8' });
}

/** What a user compares between two workspaces: index, worktree tree, status, HEAD and branch, bytes and modes. */
export function workspaceState(dir: string): Record<string, string> {
  return {
    index: sh(dir, 'git ls-files -s'),
    tree: worktreeTree(dir),
    status: sh(dir, 'git status --porcelain'),
    head: sh(dir, 'git rev-parse HEAD; git symbolic-ref -q HEAD || echo detached'),
    log: sh(dir, 'git log --format=%H:%P'),
    files: sh(dir, "find . -path ./.git -prune -o -printf '%p %y %m %l\\n' | sort; find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha256sum"),
  };
}
