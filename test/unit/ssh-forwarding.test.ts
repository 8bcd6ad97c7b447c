import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { opensshArgs } from '../../src/cli/commands/vm/access.js';
import { installBlock, renderVmSshInclude } from '../../src/shared/ssh-config.js';
import { scratchDir } from '../helpers/scratch.js';

// The guest is untrusted: neither `ssh NAME.vm` (through banger's managed block) nor `banger vm ssh` may
// hand it the user's ssh-agent or X11 display, even when the user's own config turns them on for `Host *`.

const hasSsh = spawnSync('ssh', ['-V']).status === 0;
const target = {
  host: '127.77.0.2',
  port: 22,
  user: 'root',
  identityFile: '/var/lib/banger/ssh/id_ed25519',
  knownHostsFile: '/var/lib/banger/ssh/known_hosts',
  hostKeyAlias: 'dev.vm',
};
const USER_FORWARDS_ALL = 'Host *\n  ForwardAgent yes\n  ForwardX11 yes\n  ForwardX11Trusted yes\n';

test('banger vm ssh: the argv turns agent and X11 forwarding off', () => {
  const argv = opensshArgs(target, ['-t']);
  const opts = argv.flatMap((a, i) => (argv[i - 1] === '-o' ? [a] : []));
  assert.ok(opts.includes('ForwardAgent=no'), argv.join(' '));
  assert.ok(opts.includes('ForwardX11=no'), argv.join(' '));
  assert.ok(!argv.includes('-A') && !argv.includes('-X') && !argv.includes('-Y'));
  assert.equal(argv.at(-1), 'root@127.77.0.2', 'the destination stays last, after the extra args');
});

test('managed Host *.vm block: ForwardAgent no and ForwardX11 no', () => {
  const text = renderVmSshInclude({ identityFile: '/i', knownHostsFile: '/k', vms: [] });
  const star = text.slice(text.indexOf('Host *.vm'));
  assert.match(star, /^ {2}ForwardAgent no$/m);
  assert.match(star, /^ {2}ForwardX11 no$/m);
});

test(
  'OpenSSH resolves forwarding off for NAME.vm and vm ssh despite a user Host * that turns it on (ssh -G)',
  { skip: !hasSsh && 'the OpenSSH client (ssh) is not installed' },
  () => {
    const dir = scratchDir('banger-sshfwd-');
    try {
      const inc = join(dir, 'banger-config');
      writeFileSync(
        inc,
        renderVmSshInclude({
          identityFile: join(dir, 'id'),
          knownHostsFile: join(dir, 'kh'),
          vms: [{ name: 'dev', hostAddress: '127.77.0.2', sshPort: 22 }],
        }),
      );
      const user = join(dir, 'user_config');
      writeFileSync(user, installBlock(USER_FORWARDS_ALL, inc));
      const g = (args: string[]) => {
        const r = spawnSync('ssh', ['-G', '-F', user, ...args], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        return r.stdout.split('\n');
      };
      const viaBlock = g(['dev.vm']);
      assert.ok(viaBlock.includes('forwardagent no'), viaBlock.join('\n'));
      assert.ok(viaBlock.includes('forwardx11 no'), viaBlock.join('\n'));
      // The user's own hosts keep what the user chose.
      assert.ok(g(['example.org']).includes('forwardagent yes'));

      // vm ssh connects by address, which no `*.vm` pattern matches: only its argv protects it.
      const argv = opensshArgs(target).filter((a) => a !== 'root@127.77.0.2');
      const viaArgv = g([...argv, 'root@127.77.0.2']);
      assert.ok(viaArgv.includes('forwardagent no'), viaArgv.join('\n'));
      assert.ok(viaArgv.includes('forwardx11 no'), viaArgv.join('\n'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
