import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execInWorkspace } from '../../src/daemon/services/workspace/workspace-command.js';
import { underMise } from '../../src/agent/mise.js';
import { MISE_NAME_PREFIXES } from '../../src/protocol/mise.js';
import { LocalShellSession } from '../helpers/local-session.js';
import { readAll, startAgent, type AgentHarness } from '../helpers/agent-harness.js';
import { tmp, write } from '../helpers/workspace-repo.js';

/**
 * The rule of protocol/mise.ts in its two implementations: the workspace's shell line (over SSH, or an agent
 * without the `mise` feature; dash and bash) and the guest agent's (exec with `mise: true`). Every case runs
 * through both.
 */

// A fake mise that says it ran; the command itself prints "plain".
const bin = tmp('banger-fakebin-');
write(bin, 'mise', '#!/bin/sh\necho "mise $*"\n', 0o755);
const PATH = `${bin}:${process.env.PATH ?? ''}`;
const home = tmp('banger-home-');
const root = tmp('banger-mise-');

type Decision = 'mise' | 'plain';
type Way = (ws: string, env: Record<string, string>) => Promise<Decision>;

const viaShell =
  (sh: string): Way =>
  async (ws, env) => {
    const session = new LocalShellSession({ shell: sh, env: { PATH, HOME: home, XDG_CONFIG_HOME: '', ...env } });
    const r = await session.exec(execInWorkspace(ws, ['echo', 'plain'], undefined));
    assert.equal(r.code, 0, r.stderr.toString());
    const out = r.stdout.toString();
    assert.ok(out === 'plain\n' || out === 'mise exec -- echo plain\n', out);
    return out === 'plain\n' ? 'plain' : 'mise';
  };
const viaAgentRule: Way = async (ws, env) => {
  const argv = underMise(['echo', 'plain'], ws, { ...process.env, PATH, HOME: home, XDG_CONFIG_HOME: '', ...env });
  if (argv.length === 2) return 'plain';
  assert.deepEqual(argv, [join(bin, 'mise'), 'exec', '--', 'echo', 'plain']);
  return 'mise';
};
const WAYS: [string, Way][] = [
  ['dash (the agent shell line)', viaShell('/bin/sh')],
  ['bash (over SSH)', viaShell('bash')],
  ['the agent', viaAgentRule],
];

async function expect(ws: string, want: Decision, what: string, env: Record<string, string> = {}): Promise<void> {
  for (const [name, way] of WAYS) assert.equal(await way(ws, env), want, `${what}, ${name}`);
}

function workspace(name: string): string {
  const ws = join(root, name, 'ws');
  mkdirSync(ws, { recursive: true });
  return ws;
}

/** Names above `dir` (or in /etc/mise) that decide for the test: this host's own mise config. */
function hostMiseConfig(dir: string): string[] {
  const found = existsSync('/etc/mise') ? ['/etc/mise'] : [];
  for (let d = dir; ; d = dirname(d)) {
    const names = existsSync(d) ? readdirSync(d) : [];
    found.push(...names.filter((n) => MISE_NAME_PREFIXES.some((p) => n.startsWith(p))).map((n) => join(d, n)));
    if (names.includes('.config') && readdirSync(join(d, '.config')).some((n) => n.startsWith('mise'))) found.push(join(d, '.config'));
    if (d === '/') return found;
  }
}

void describe('vm exec in a workspace: `mise exec` only where mise config may apply', () => {
  void it('runs the command directly when no mise config can apply', async (t) => {
    const stray = hostMiseConfig(root);
    if (stray.length > 0) return t.skip(`this host has mise config above the test directory: ${stray.join(', ')}`);
    const ws = workspace('none');
    await expect(ws, 'plain', 'no config');
    // The variable every guest gets (GUEST_MISE_ENV) does not count; any other of mise's does.
    await expect(ws, 'plain', 'MISE_OFFLINE', { MISE_OFFLINE: '1' });
    await expect(ws, 'mise', 'MISE_ENV', { MISE_ENV: 'ci' });
    await expect(ws, 'mise', 'RTX_ENV', { RTX_ENV: 'ci' });
  });

  void it('uses mise exec for a config in the workspace, above it, in the home directory or the global one', async () => {
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
      await expect(ws, 'mise', name);
    }
    const ws = workspace('global');
    const globalConfig = tmp('banger-home-');
    write(join(globalConfig, '.config', 'mise'), 'config.toml', '[tools]\n');
    await expect(ws, 'mise', 'global config', { HOME: globalConfig });
    const homeToolVersions = tmp('banger-home-');
    write(homeToolVersions, '.tool-versions', 'node 20\n');
    await expect(ws, 'mise', '~/.tool-versions', { HOME: homeToolVersions });
    const xdg = tmp('banger-xdg-');
    mkdirSync(join(xdg, 'mise'));
    await expect(ws, 'mise', '$XDG_CONFIG_HOME/mise', { XDG_CONFIG_HOME: xdg });
  });

  void it('runs plainly when the guest has no mise, config or not', async () => {
    const ws = workspace('nomise');
    write(ws, 'mise.toml', '[env]\n');
    const r = await new LocalShellSession({ env: { HOME: home } }).exec(execInWorkspace(ws, ['sh', '-c', 'pwd; exit 3'], undefined));
    assert.equal(r.code, 3);
    assert.equal(r.stdout.toString(), `${ws}\n`);
    assert.deepEqual(underMise(['true'], ws, { PATH: '/usr/bin:/bin', HOME: home }), ['true']);
  });

  void it('says the workspace is gone, and what to do, when it was removed in the guest', async () => {
    const ws = join(workspace('gone'), "it's gone");
    for (const hasMise of [undefined, false, true]) {
      const r = await new LocalShellSession({ env: { HOME: home } }).exec(execInWorkspace(ws, ['echo', 'ran'], hasMise));
      assert.equal(r.code, 2, `hasMise ${hasMise}`);
      assert.equal(r.stdout.toString(), '');
      assert.equal(
        r.stderr.toString(),
        `banger: the workspace ${ws} is not in the guest any more: import it again with \`banger vm workspace prepare VM REPO\`, or run the command elsewhere with \`vm exec -w DIR\`\n`,
      );
    }
  });
});

void describe('the guest agent: exec with mise', () => {
  let h: AgentHarness;
  before(async () => {
    h = await startAgent();
  });
  after(async () => {
    await h.close();
  });

  void it('runs argv under mise exec where a config applies, as is elsewhere', async () => {
    const c = await h.client();
    await c.hello();
    const run = async (cwd: string) => {
      const p = await c.exec({ argv: ['echo', 'plain'], cwd, mise: true, env: { PATH, HOME: home, XDG_CONFIG_HOME: '' } });
      assert.equal((await p.exited).code, 0);
      return (await readAll(p.stdout)).toString();
    };
    const configured = workspace('agent-config');
    write(configured, 'mise.toml', '[env]\n');
    assert.equal(await run(configured), 'mise exec -- echo plain\n');
    if (hostMiseConfig(root).length === 0) assert.equal(await run(workspace('agent-plain')), 'plain\n');
  });
});
