import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { execInWorkspace } from '../../src/daemon/services/workspace/guest-scripts.js';
import { LocalShellSession } from '../helpers/local-session.js';
import { tmp, write } from '../helpers/workspace-repo.js';

/** Names mise may read in a directory (what the guest-side check looks for). */
const MISE_NAME = /^(\.?mise|\.tool-versions$|\.rtx)/;

/** Directories from `dir` up to `/` that hold a name mise may read: the host's own, which would decide for the test. */
function miseNamesAbove(dir: string): string[] {
  const found: string[] = [];
  for (let d = dir; ; d = dirname(d)) {
    const names = (() => {
      try {
        return readdirSync(d);
      } catch {
        return [];
      }
    })();
    found.push(...names.filter((n) => MISE_NAME.test(n)).map((n) => join(d, n)));
    if (existsSync(join(d, '.config')) && readdirSync(join(d, '.config')).some((n) => n.startsWith('mise')))
      found.push(join(d, '.config', 'mise*'));
    if (d === '/') return found;
  }
}

void describe('vm exec in a workspace: `mise exec` only where a mise config may apply', () => {
  // A fake mise that says it ran; the command itself prints "plain".
  const bin = tmp('banger-fakebin-');
  write(bin, 'mise', '#!/bin/sh\necho "mise $*"\n', 0o755);
  const home = tmp('banger-home-');
  const root = tmp('banger-mise-');
  const shell = (env: Record<string, string> = {}, sh = '/bin/sh') =>
    new LocalShellSession({ shell: sh, env: { PATH: `${bin}:${process.env.PATH ?? ''}`, HOME: home, XDG_CONFIG_HOME: '', ...env } });
  const run = async (ws: string, env?: Record<string, string>, sh?: string) => {
    const r = await shell(env, sh).exec(execInWorkspace(ws, ['echo', 'plain'], undefined));
    assert.equal(r.code, 0, r.stderr.toString());
    return r.stdout.toString();
  };
  const workspace = (name: string) => {
    const ws = join(root, name, 'ws');
    mkdirSync(ws, { recursive: true });
    return ws;
  };

  void it('runs the command directly when no mise config can apply', async (t) => {
    const stray = [...miseNamesAbove(root), ...(existsSync('/etc/mise') ? ['/etc/mise'] : [])];
    if (stray.length > 0) return t.skip(`this host has mise config above the test directory: ${stray.join(', ')}`);
    // dash runs it through the agent, bash over SSH (its `export -p` differs).
    for (const sh of ['/bin/sh', 'bash']) {
      assert.equal(await run(workspace('none'), {}, sh), 'plain\n', sh);
      // The variable every guest gets (GUEST_ENVIRONMENT) does not count; any other of mise's does.
      assert.equal(await run(workspace('none'), { MISE_OFFLINE: '1' }, sh), 'plain\n', sh);
      assert.equal(await run(workspace('none'), { MISE_ENV: 'ci' }, sh), 'mise exec -- echo plain\n', sh);
    }
  });

  void it('uses mise exec for a config in the workspace, above it, or in the home directory', async () => {
    const cases: [string, (ws: string) => void][] = [
      ['mise.toml', (ws) => write(ws, 'mise.toml', '[env]\n')],
      ['.mise.local.toml', (ws) => write(ws, '.mise.local.toml', '[env]\n')],
      ['.mise/config.toml', (ws) => write(join(ws, '.mise'), 'config.toml', '[env]\n')],
      ['.config/mise/config.toml', (ws) => write(join(ws, '.config', 'mise'), 'config.toml', '[env]\n')],
      ['.tool-versions in the parent', (ws) => write(dirname(ws), '.tool-versions', 'node 20\n')],
      ['mise.toml in the parent', (ws) => write(dirname(ws), 'mise.toml', '[env]\n')],
    ];
    for (const [name, make] of cases) {
      const ws = workspace(name.replace(/[^a-z]/g, '-'));
      make(ws);
      assert.equal(await run(ws), 'mise exec -- echo plain\n', name);
    }
    const withGlobal = tmp('banger-home-');
    write(join(withGlobal, '.config', 'mise'), 'config.toml', '[tools]\n');
    const ws = workspace('global');
    assert.equal(await run(ws, { HOME: withGlobal }), 'mise exec -- echo plain\n', 'global config');
    const withHomeToolVersions = tmp('banger-home-');
    write(withHomeToolVersions, '.tool-versions', 'node 20\n');
    assert.equal(await run(ws, { HOME: withHomeToolVersions }), 'mise exec -- echo plain\n', '~/.tool-versions');
  });

  void it('runs plainly when the guest has no mise, config or not', async () => {
    const ws = workspace('nomise');
    write(ws, 'mise.toml', '[env]\n');
    const noMise = new LocalShellSession({ env: { HOME: home } });
    const r = await noMise.exec(execInWorkspace(ws, ['sh', '-c', 'pwd; exit 3'], undefined));
    assert.equal(r.code, 3);
    assert.equal(r.stdout.toString(), `${ws}\n`);
  });
});
