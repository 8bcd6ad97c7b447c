import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { install, uninstall } from '../../src/cli/commands/ssh-config.js';
import {
  BLOCK_BEGIN,
  BLOCK_END,
  createdByBanger,
  hasBlock,
  installBlock,
  renderKnownHosts,
  renderVmSshInclude,
  uninstallBlock,
} from '../../src/shared/ssh-config.js';
import { scratchDir } from '../helpers/scratch.js';

const INC = '/var/lib/banger/ssh/config';
const BLOCK = `${BLOCK_BEGIN}\nInclude ${INC}\n${BLOCK_END}\n`;
const hasSsh = spawnSync('ssh', ['-V']).status === 0;

const userFiles: Record<string, string | null> = {
  missing: null,
  empty: '',
  'only a newline': '\n',
  'no trailing newline': 'Host a\n  User b',
  'CRLF line endings': 'Host a\r\n  User b\r\n\r\nHost c\r\n  Port 2200\r\n',
  'CRLF, no trailing newline': 'Host a\r\n  User b',
  'existing Include and Host blocks':
    '# my config\nInclude ~/.ssh/config.d/*\n\nHost github.com\n  User git\n  IdentityFile ~/.ssh/gh\n\nHost *\n  ServerAliveInterval 30\n',
  'bytes that are not UTF-8 (read as latin1)': 'Host caf\xe9\n  User \xff\xfe\n',
  'trailing whitespace and tabs': 'Host x \t\n\tUser y  \n\n\n',
};

for (const [name, before] of Object.entries(userFiles)) {
  test(`ssh config round trip: ${name}`, () => {
    const installed = installBlock(before, INC);
    const crlf = before !== null && /^[^\n]*\r\n/.test(before);
    // The block comes first, in the file's line ending style, and the user's bytes follow untouched.
    assert.ok(installed.startsWith(BLOCK_BEGIN + (crlf ? '\r\n' : '\n')));
    if (before !== null) {
      assert.equal(installed, (crlf ? BLOCK.replaceAll('\n', '\r\n') : BLOCK) + before);
      assert.equal(createdByBanger(installed), 'nothing');
    } else assert.equal(createdByBanger(installed), 'file');
    assert.ok(hasBlock(installed));
    assert.equal(installBlock(installed, INC), installed, 'install twice = once');
    assert.equal(uninstallBlock(installed), before, 'uninstall restores the exact bytes (null: delete the file)');
    if (before !== null) {
      assert.equal(hasBlock(before), false);
      assert.equal(uninstallBlock(before), before, 'uninstall when not installed changes nothing');
    }
    // The user edits the file after install: their lines stay, banger's go.
    const added = crlf ? 'Host late\r\n  User me\r\n' : 'Host late\n  User me\n';
    assert.equal(uninstallBlock(installed + added), (before ?? '') + added);
    assert.equal(uninstallBlock('# mine\n' + installed), '# mine\n' + (before ?? ''));
  });
}

test('a file banger created holds the block alone, and says so', () => {
  assert.equal(
    installBlock(null, INC),
    `${BLOCK_BEGIN}\n# banger created this file; uninstall deletes it if nothing else is in it\nInclude ${INC}\n${BLOCK_END}\n`,
  );
  const withDir = installBlock(null, INC, { createdDir: true });
  assert.equal(createdByBanger(withDir), 'file-and-dir');
  assert.equal(uninstallBlock(withDir), null);
  // An empty file that existed before install is not "created by banger": it stays, empty.
  assert.equal(uninstallBlock(installBlock('', INC)), '');
});

test('install rewrites a stale block in place, keeping what it records', () => {
  const old = installBlock('Host a\r\n', '/old/ssh/config');
  const now = installBlock(old, INC);
  assert.equal(now, BLOCK.replaceAll('\n', '\r\n') + 'Host a\r\n');
  const created = installBlock(installBlock(null, '/old/ssh/config', { createdDir: true }) + 'Host b\n', INC);
  assert.equal(createdByBanger(created), 'file-and-dir');
  assert.equal(uninstallBlock(created), 'Host b\n', 'the user added lines: the file is theirs now');
});

test('include paths with spaces are quoted; impossible ones are refused', () => {
  assert.ok(installBlock('', '/home/a b/banger/ssh/config').includes('\nInclude "/home/a b/banger/ssh/config"\n'));
  assert.throws(() => installBlock('', 'relative/config'), /must be absolute/);
  assert.throws(() => installBlock('', '/x"y/config'), /quote, backslash or control/);
});

test('a block without its end marker is reported, not guessed at', () => {
  assert.throws(() => uninstallBlock(`${BLOCK_BEGIN}\nInclude ${INC}\nHost a\n`), /no end marker/);
});

const vms = [
  { name: 'fix-42', hostAddress: '127.77.0.2', sshPort: 22 },
  { name: 'alpha', hostAddress: '127.0.0.1', sshPort: 41022 },
];
const INCLUDE_FILE = `# Written by banger; it is rewritten whenever VMs change, so edits here are lost.
# Your ~/.ssh/config Includes it (banger ssh-config install).

Host alpha.vm
  HostName 127.0.0.1
  Port 41022
  HostKeyAlias alpha.vm

Host fix-42.vm
  HostName 127.77.0.2
  Port 22
  HostKeyAlias fix-42.vm

Host *.vm
  User root
  IdentityFile /var/lib/banger/ssh/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile /var/lib/banger/ssh/known_hosts
  StrictHostKeyChecking yes
  ForwardAgent no
  ForwardX11 no
`;

test('renderVmSshInclude: one Host block per VM (sorted), then Host *.vm', () => {
  const text = renderVmSshInclude({
    identityFile: '/var/lib/banger/ssh/id_ed25519',
    knownHostsFile: '/var/lib/banger/ssh/known_hosts',
    vms,
  });
  assert.equal(text, INCLUDE_FILE);
  const odd = renderVmSshInclude({ identityFile: '/h/a b/id', knownHostsFile: '/h/50%/kh', vms: [] });
  assert.ok(odd.includes('  IdentityFile "/h/a b/id"\n'));
  assert.ok(odd.includes('  UserKnownHostsFile /h/50%%/kh\n'), '%-tokens are escaped');
  assert.throws(() =>
    renderVmSshInclude({
      identityFile: '/i',
      knownHostsFile: '/k',
      vms: [{ name: 'a*', hostAddress: '127.0.0.1', sshPort: 22 }],
    }),
  );
});

test('renderKnownHosts: NAME.vm <key> per VM', () => {
  assert.equal(
    renderKnownHosts([
      { name: 'fix-42', hostPublicKey: 'ssh-ed25519 AAAAC3Nza fix-42.vm\n' },
      { name: 'alpha', hostPublicKey: 'ssh-ed25519 AAAAB' },
    ]),
    'alpha.vm ssh-ed25519 AAAAB\nfix-42.vm ssh-ed25519 AAAAC3Nza fix-42.vm\n',
  );
  assert.equal(renderKnownHosts([]), '');
});

test(
  'OpenSSH reads the rendered files: ssh -G (no connection made)',
  { skip: !hasSsh && 'the OpenSSH client (ssh) is not installed' },
  () => {
    const dir = scratchDir('banger-sshcfg-');
    try {
      const inc = join(dir, 'banger ssh', 'config');
      mkdirSync(join(dir, 'banger ssh'));
      writeFileSync(
        inc,
        renderVmSshInclude({ identityFile: join(dir, 'id_ed25519'), knownHostsFile: join(dir, 'known_hosts'), vms }),
      );
      const g = (file: string, host: string) => {
        const r = spawnSync('ssh', ['-G', '-F', file, host], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        return r.stdout.split('\n');
      };
      const vm = g(inc, 'fix-42.vm');
      for (const l of [
        'hostname 127.77.0.2',
        'port 22',
        'user root',
        'stricthostkeychecking true',
        'hostkeyalias fix-42.vm',
        'identitiesonly yes',
      ])
        assert.ok(vm.includes(l), `${l} in ssh -G output:\n${vm.join('\n')}`);
      assert.ok(vm.includes(`identityfile ${join(dir, 'id_ed25519')}`));
      assert.ok(vm.includes(`userknownhostsfile ${join(dir, 'known_hosts')}`));
      assert.ok(g(inc, 'alpha.vm').includes('port 41022'));

      // Through a user's config: the block at the top wins for *.vm, and leaves every other host alone
      // even though the included file ends inside a Host block.
      const user = join(dir, 'user_config');
      // A setting right after the block is global only if the Include does not leak its last Host scope.
      writeFileSync(
        user,
        installBlock('ServerAliveCountMax 7\n' + userFiles['existing Include and Host blocks']!, inc),
      );
      const viaUser = g(user, 'fix-42.vm');
      assert.ok(viaUser.includes('hostname 127.77.0.2') && viaUser.includes('user root'), viaUser.join('\n'));
      const gh = g(user, 'github.com');
      assert.ok(gh.includes('user git') && gh.includes('hostname github.com'), gh.join('\n'));
      assert.ok(!gh.some((l) => l.startsWith('hostkeyalias')));
      assert.ok(gh.includes('serveralivecountmax 7'));
      assert.ok(g(user, 'example.org').includes('serveralivecountmax 7'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('install/uninstall on disk: missing ~/.ssh, modes, symlinks', async () => {
  const dir = scratchDir('banger-sshcfg-');
  try {
    // No ~/.ssh: install creates it 0700 and the config 0600; uninstall removes both.
    const ssh = join(dir, 'home', '.ssh');
    mkdirSync(join(dir, 'home'));
    const cfg = join(ssh, 'config');
    assert.equal((await install(cfg, INC)).action, 'created');
    assert.equal(statSync(ssh).mode & 0o777, 0o700);
    assert.equal(statSync(cfg).mode & 0o777, 0o600);
    assert.equal((await install(cfg, INC)).action, 'unchanged');
    assert.equal((await uninstall(cfg, INC)).action, 'deleted');
    assert.equal(existsSync(ssh), false);
    assert.equal((await uninstall(cfg, INC)).action, 'not-installed');

    // ~/.ssh exists but no config; ssh later puts known_hosts there: uninstall leaves the directory.
    mkdirSync(ssh, { mode: 0o700 });
    await install(cfg, INC);
    writeFileSync(join(ssh, 'known_hosts'), 'x\n');
    assert.equal((await uninstall(cfg, INC)).action, 'deleted');
    assert.ok(existsSync(join(ssh, 'known_hosts')) && !existsSync(cfg));

    // An existing file keeps its mode and bytes.
    const bytes = Buffer.from('Host a\r\n  User b\r\n\xff', 'latin1');
    writeFileSync(cfg, bytes, { mode: 0o640 });
    assert.equal((await install(cfg, INC)).action, 'added');
    assert.equal(statSync(cfg).mode & 0o777, 0o640);
    assert.equal((await uninstall(cfg, INC)).action, 'removed');
    assert.deepEqual(readFileSync(cfg), bytes);
    assert.equal(statSync(cfg).mode & 0o777, 0o640);

    // A symlinked config (dotfile managers) is edited where it points; the link stays a link.
    const real = join(dir, 'dotfiles-ssh-config');
    writeFileSync(real, 'Host z\n');
    rmSync(cfg);
    symlinkSync(real, cfg);
    await install(cfg, INC);
    assert.ok(lstatSync(cfg).isSymbolicLink());
    assert.equal(readlinkSync(cfg), real);
    assert.equal(readFileSync(real, 'utf8'), BLOCK + 'Host z\n');
    await uninstall(cfg, INC);
    assert.equal(readFileSync(real, 'utf8'), 'Host z\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('banger ssh-config install/show/uninstall from the command line', () => {
  const dir = scratchDir('banger-sshcfg-');
  try {
    const env = { ...process.env, BANGER_HOME: join(dir, 'state'), HOME: dir, NO_COLOR: '1' };
    const banger = (...args: string[]) =>
      spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'ssh-config', ...args], {
        encoding: 'utf8',
        env,
      });
    let r = banger('install');
    assert.equal(r.status, 0, r.stderr);
    const inc = join(dir, 'state', 'ssh', 'config');
    assert.match(r.stderr, new RegExp(`created ~/\\.ssh/config with an Include of ${inc.replaceAll('.', '\\.')}`));
    assert.match(banger('install').stderr, /already installed/);
    r = banger('show', '--json');
    assert.equal(r.status, 0, r.stderr);
    const shown = JSON.parse(r.stdout) as {
      installed: boolean;
      includeFile: string;
      includedPath: string;
      includeContent: string | null;
    };
    assert.deepEqual(
      {
        installed: shown.installed,
        includeFile: shown.includeFile,
        includedPath: shown.includedPath,
        includeContent: shown.includeContent,
      },
      { installed: true, includeFile: inc, includedPath: inc, includeContent: null },
    );
    r = banger('uninstall');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /removed ~\/\.ssh\/config/);
    assert.equal(existsSync(join(dir, '.ssh')), false);
    assert.match(banger('show').stdout, /not installed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
