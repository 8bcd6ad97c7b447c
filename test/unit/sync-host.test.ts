import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, lstatSync, mkdirSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { collectHostIdentity, MAX_SYNC_FILE_BYTES } from '../../src/daemon/services/sync/host.js';
import { syncScript } from '../../src/daemon/services/sync/guest-script.js';
import { parseConfig } from '../../src/shared/config.js';
import { runCommand } from '../../src/shared/command.js';
import { isBangerError } from '../../src/errors/index.js';
import { scratchDir } from '../helpers/scratch.js';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq1nG7H3Z0w3bQm0ZC2nK5oVfD3xH3mYkq5b3sJ0aBc ada@laptop';

function makeHome(): string {
  const home = scratchDir('sync-home-');
  writeFileSync(join(home, '.gitconfig'), '[user]\n\tname = Ada Lovelace\n\temail = ada@example.invalid\n');
  mkdirSync(join(home, '.ssh'));
  writeFileSync(join(home, '.ssh', 'id_ed25519.pub'), KEY + '\n');
  writeFileSync(join(home, '.ssh', 'id_rsa.pub'), 'not a key\n');
  writeFileSync(join(home, '.ssh', 'known_hosts.pub'), KEY + '\n'); // not an id_* key file: ignored
  return home;
}

const entry = (host: string, guest = '/root/x', mode = '0600', followLinks = false) => ({ host, guest, mode, followLinks });

test('collects the git identity and id_*.pub keys from the given home; a bad key file is a warning', async () => {
  const home = makeHome();
  try {
    const id = await collectHostIdentity(home, [], { run: runCommand });
    assert.deepEqual(id.git, { name: 'Ada Lovelace', email: 'ada@example.invalid' });
    assert.deepEqual(id.keys, [{ file: '~/.ssh/id_ed25519.pub', line: KEY }]);
    assert.deepEqual(id.warnings, ['~/.ssh/id_rsa.pub: not a single OpenSSH public key line; not added']);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test('configured files: read with ~ expanded; missing, special, oversized and links out of home are warnings', async () => {
  const home = makeHome();
  try {
    writeFileSync(join(home, 'token'), 'secret');
    writeFileSync(join(home, 'big'), Buffer.alloc(MAX_SYNC_FILE_BYTES + 1));
    symlinkSync('/etc/hostname', join(home, 'escape'));
    symlinkSync(join(home, 'token'), join(home, 'inside-link'));
    execFileSync('mkfifo', [join(home, 'fifo')]);
    const id = await collectHostIdentity(
      home,
      [
        entry('~/token', '/root/.config/t', '0640'),
        entry('~/inside-link'),
        entry('~/missing'),
        entry('~/fifo'),
        entry('~/big'),
        entry('~/escape'),
        entry('relative/path'),
      ],
      { run: runCommand },
    );
    assert.deepEqual(
      id.files.map((f) => [f.host, f.guest, f.mode, f.content.toString()]),
      [
        ['~/token', '/root/.config/t', '0640', 'secret'],
        ['~/inside-link', '/root/x', '0600', 'secret'],
      ],
    );
    const w = id.warnings.filter((x) => !x.includes('id_rsa'));
    assert.equal(w.length, 5);
    assert.match(w[0]!, /^~\/missing: missing on the host; not synced$/);
    assert.match(w[1]!, /^~\/fifo: not a regular file/);
    assert.match(w[2]!, /^~\/big: larger than/);
    assert.match(w[3]!, /^~\/escape: a link out of the home directory \(to \/etc\/hostname\); set "followLinks"/);
    assert.match(w[4]!, /^relative\/path: not an absolute path/);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test('followLinks lets a configured link leave the home directory', async () => {
  const home = makeHome();
  try {
    symlinkSync('/etc/hostname', join(home, 'escape'));
    const id = await collectHostIdentity(home, [entry('~/escape', '/root/h', '0644', true)], { run: runCommand });
    assert.equal(id.files.length, 1);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test('a home without git config or keys gives an empty identity, no error', async () => {
  const home = scratchDir('sync-empty-');
  try {
    const id = await collectHostIdentity(home, [], { run: runCommand });
    assert.deepEqual(id, { git: {}, keys: [], files: [], warnings: [] });
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test('the guest script quotes every value and carries contents as base64, never as a command argument', () => {
  const s = syncScript({
    git: { name: "O'Brien $(reboot)", email: 'o@x' },
    keys: [{ file: '~/.ssh/id_ed25519.pub', line: KEY }],
    files: [{ host: '~/t', guest: "/root/dir with 'quote'/t", mode: '0640', content: Buffer.from('secret-value') }],
  });
  assert.match(s, /git config --global user\.name 'O'\\''Brien \$\(reboot\)'/);
  assert.match(s, /p='\/root\/dir with '\\''quote'\\''\/t'/);
  assert.ok(!s.includes('secret-value'));
  assert.ok(s.includes(Buffer.from('secret-value').toString('base64')));
  assert.match(s, /install_changed "\$t" "\$p" 0640; rm -f "\$t"/);
});

test('the guest script runs under sh against a scratch root and keeps existing authorized_keys lines', () => {
  const root = scratchDir('sync-guest-');
  try {
    mkdirSync(join(root, '.ssh'));
    writeFileSync(join(root, '.ssh', 'authorized_keys'), 'ssh-ed25519 AAAAexisting banger'); // no final newline
    const script = syncScript({
      git: {},
      keys: [{ file: 'k', line: KEY }],
      files: [{ host: 'h', guest: '/root/a/b/c.txt', mode: '0640', content: Buffer.from('hello\n') }],
    }).replaceAll('/root', root);
    execFileSync('sh', ['-s'], { input: script });
    execFileSync('sh', ['-s'], { input: script }); // twice: the key is not added again
    const keys = execFileSync('cat', [join(root, '.ssh', 'authorized_keys')], { encoding: 'utf8' });
    assert.equal(keys, `ssh-ed25519 AAAAexisting banger\n${KEY}\n`);
    assert.equal(execFileSync('stat', ['-c', '%a', join(root, 'a/b/c.txt')], { encoding: 'utf8' }), '640\n');
    assert.equal(execFileSync('cat', [join(root, 'a/b/c.txt')], { encoding: 'utf8' }), 'hello\n');
    // Unchanged content is not rewritten (a VM syncs at every start), but its mode is put back.
    const inode = () => execFileSync('stat', ['-c', '%i', join(root, 'a/b/c.txt')], { encoding: 'utf8' });
    const before = inode();
    chmodSync(join(root, 'a/b/c.txt'), 0o666);
    execFileSync('sh', ['-s'], { input: script });
    assert.equal(inode(), before);
    assert.equal(execFileSync('stat', ['-c', '%a', join(root, 'a/b/c.txt')], { encoding: 'utf8' }), '640\n');
    writeFileSync(join(root, 'a/b/c.txt'), 'edited in the guest\n');
    execFileSync('sh', ['-s'], { input: script });
    assert.equal(execFileSync('cat', [join(root, 'a/b/c.txt')], { encoding: 'utf8' }), 'hello\n');
    assert.deepEqual(readdirSync(join(root, 'a/b')), ['c.txt'], 'no temporary file left');
    // A symlink at the path is replaced by the file, even when what it points to holds the same bytes.
    writeFileSync(join(root, 'elsewhere.txt'), 'hello\n');
    rmSync(join(root, 'a/b/c.txt'));
    symlinkSync(join(root, 'elsewhere.txt'), join(root, 'a/b/c.txt'));
    execFileSync('sh', ['-s'], { input: script });
    assert.equal(lstatSync(join(root, 'a/b/c.txt')).isSymbolicLink(), false);
    assert.equal(execFileSync('cat', [join(root, 'a/b/c.txt')], { encoding: 'utf8' }), 'hello\n');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('the git identity is set in the guest, and a second sync with the same identity leaves .gitconfig untouched', () => {
  const root = scratchDir('sync-guest-');
  try {
    const run = (name: string) =>
      execFileSync('sh', ['-s'], { input: syncScript({ git: { name, email: 'ada@example.org' }, keys: [], files: [] }).replaceAll('/root', root) });
    run('Ada Lovelace');
    const gitconfig = join(root, '.gitconfig');
    const first = statSync(gitconfig);
    run('Ada Lovelace');
    assert.equal(statSync(gitconfig).ino, first.ino);
    assert.equal(statSync(gitconfig).mtimeMs, first.mtimeMs);
    run('Ada King');
    assert.equal(execFileSync('git', ['config', '--file', gitconfig, 'user.name'], { encoding: 'utf8' }), 'Ada King\n');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('config.json sync entries: defaults applied; a relative guest path is refused naming its key', () => {
  const c = parseConfig({ sync: [{ host: '~/.config/gh/hosts.yml', guest: '/root/.config/gh/hosts.yml' }] });
  assert.deepEqual(c.sync, [{ host: '~/.config/gh/hosts.yml', guest: '/root/.config/gh/hosts.yml', mode: '0600', followLinks: false }]);
  assert.throws(
    () => parseConfig({ sync: [{ host: '~/a', guest: 'root/a' }] }),
    (e: unknown) => isBangerError(e) && /sync\.0\.guest: an absolute guest path/.test(e.message),
  );
  assert.throws(
    () => parseConfig({ sync: [{ host: '~/a', guest: '/root/a', mode: '777x' }] }),
    (e: unknown) => isBangerError(e) && /sync\.0\.mode/.test(e.message),
  );
});
