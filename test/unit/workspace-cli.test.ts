import { test } from 'node:test';
import assert from 'node:assert/strict';
import { splitRepo } from '../../src/cli/commands/vm/run.js';
import { execArgv, execCommand, guestDir } from '../../src/daemon/services/vm/guest-access.js';
import { scratchDir } from '../helpers/scratch.js';

const argv = (...rest: string[]) => ['node', 'banger.js', 'vm', 'run', ...rest];

test('vm run: the first operand before -- is the repo when it looks like a directory', () => {
  assert.deepEqual(splitRepo(['./repo', 'make', 'test'], argv('./repo', '--', 'make', 'test')), {
    repo: './repo',
    command: ['make', 'test'],
  });
  assert.deepEqual(splitRepo(['/abs/repo'], argv('/abs/repo')), { repo: '/abs/repo', command: [] });
  const dir = scratchDir('banger-splitrepo-');
  assert.deepEqual(splitRepo([dir, 'true'], argv(dir, '--', 'true')).repo, dir);
  // After --, everything is the command, even ./x or /x.
  assert.deepEqual(splitRepo(['./script.sh'], argv('--', './script.sh')), { command: ['./script.sh'] });
  assert.deepEqual(splitRepo(['/bin/ls', '-l'], argv('--name', 'x', '--', '/bin/ls', '-l')), { command: ['/bin/ls', '-l'] });
  assert.deepEqual(splitRepo(['uname'], argv('uname')), { command: ['uname'] });
  assert.deepEqual(splitRepo([], argv()), { command: [] });
});

test('vm exec runs in the workspace (mise exec where a mise config may apply) unless a workdir is given', () => {
  const ws = { workspace: { guestPath: "/root/it's", sourcePath: '/h', headCommit: null, baseCommit: 'b', includeUntracked: false, preparedAt: 't' } };
  assert.equal(execCommand({ workspace: null }, ['ls', 'a b'], undefined), "exec ls 'a b'");
  assert.equal(execCommand({ workspace: null }, [], '/tmp'), 'cd /tmp && exec bash -l');
  assert.match(execCommand(ws, ['ls'], undefined), /\ncd '\/root\/it'\\''s' 2>\/dev\/null \|\| \{ .* exit 2; \}\nif command -v mise .* && mise_applies; then exec mise exec -- ls; else exec ls; fi$/);
  assert.match(execCommand(ws, [], undefined), /^cd '\/root\/it'\\''s' 2>\/dev\/null \|\| \{ .* exit 2; \}\nexec bash -l$/);
  assert.equal(execCommand(ws, ['ls'], '/srv'), 'cd /srv && exec ls');
});

test('vm exec over the agent starts argv without a shell, except for a login shell', () => {
  const ws = { workspace: { guestPath: '/root/w', sourcePath: '/h', headCommit: null, baseCommit: 'b', includeUntracked: false, preparedAt: 't' } };
  for (const agentDecidesMise of [true, false]) {
    assert.deepEqual(execArgv({ workspace: null }, ['ls', 'a b'], undefined, agentDecidesMise), { argv: ['ls', 'a b'], cwd: '/root', mise: false });
    assert.deepEqual(execArgv(ws, ['ls'], '/srv', agentDecidesMise), { argv: ['ls'], cwd: '/srv', mise: false });
    assert.equal(execArgv({ workspace: null }, [], undefined, agentDecidesMise), null);
  }
  // In the workspace the agent decides on `mise exec`; one without that feature gets the shell line, which does.
  assert.deepEqual(execArgv(ws, ['ls'], undefined, true), { argv: ['ls'], cwd: '/root/w', mise: true });
  assert.equal(execArgv(ws, ['ls'], undefined, false), null);
});

test('vm exec -w and session --cwd: a relative directory is taken from the workspace, or /root without one', () => {
  const ws = { workspace: { guestPath: '/root/app', sourcePath: '/h', headCommit: null, baseCommit: 'b', includeUntracked: false, preparedAt: 't' } };
  assert.equal(guestDir(ws, 'src'), '/root/app/src');
  assert.equal(guestDir(ws, './src/../lib'), '/root/app/lib');
  assert.equal(guestDir(ws, '..'), '/root');
  assert.equal(guestDir({ workspace: null }, 'src'), '/root/src');
  assert.equal(guestDir(ws, '/srv/x'), '/srv/x');
});
