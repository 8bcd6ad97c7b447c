/**
 * Identity sync on a real VM: a user's git identity, SSH public key and a configured credential file reach
 * the guest at start and again on `vm sync`; a missing configured file warns and the VM starts anyway;
 * `--no-sync` copies nothing; contents never reach `vm show` or the daemon's log.
 * The "user" is a home directory the test makes (HOME of the CLI calls), so the host's own is never read.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { E2E_HOME, banger, bangerOk, e2eSteps } from '../helpers/cli.js';
import { scratchDir } from '../helpers/scratch.js';

const VM = 'e2e-sync';
const SECRET_1 = 'token-one-4b1f0c9e';
const SECRET_2 = 'token-two-77d2aa31';
const { step, printConsolesIfFailed } = e2eSteps();

interface Synced {
  at: string;
  git: string[];
  sshKeys: string[];
  files: { host: string; guest: string; mode: string }[];
  warnings: string[];
}
interface Shown {
  id: string;
  synced: Synced | null;
  network: { hostAddress: string; sshPort: number };
}

void describe('identity sync: git identity, SSH key and configured files into the guest (real VM)', { timeout: 900_000 }, () => {
  const home = scratchDir('banger-sync-home-');
  const env = { HOME: home };
  const configPath = join(E2E_HOME, 'config.json');
  let configBefore: string | undefined;
  const show = async () => JSON.parse((await bangerOk(['vm', 'show', VM, '--json'])).stdout) as Shown;
  const guest = async (cmd: string) => (await bangerOk(['vm', 'exec', VM, '--', 'sh', '-c', cmd])).stdout;

  before(async () => {
    await banger(['vm', 'delete', '--force', VM]);
    writeFileSync(join(home, '.gitconfig'), '[user]\n\tname = Ada Lovelace\n\temail = ada@example.invalid\n');
    mkdirSync(join(home, '.ssh'), { mode: 0o700 });
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ada@laptop', '-f', join(home, '.ssh', 'id_ed25519')]);
    mkdirSync(join(home, '.config', 'tool'), { recursive: true });
    writeFileSync(join(home, '.config', 'tool', 'token'), SECRET_1);
    // The daemon reads config.json's sync entries at each sync, so no restart is needed for them.
    configBefore = existsSync(configPath) ? readFileSync(configPath, 'utf8') : undefined;
    const config = configBefore ? (JSON.parse(configBefore) as Record<string, unknown>) : {};
    config.sync = [
      { host: '~/.config/tool/token', guest: '/root/.config/tool/token', mode: '0640' },
      { host: '~/not-there.txt', guest: '/root/not-there.txt' },
    ];
    writeFileSync(configPath, JSON.stringify(config, null, 2));
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', VM]);
    if (configBefore === undefined) rmSync(configPath, { force: true });
    else writeFileSync(configPath, configBefore);
    rmSync(home, { recursive: true, force: true });
  });

  step('a start copies the identity, key and file, and warns about the missing one', async () => {
    const r = await bangerOk(['vm', 'create', '--name', VM, '--start', '--cpus', '1', '--memory', '512M'], 0, {
      env,
      timeoutMs: 900_000,
    });
    assert.match(r.stderr, /~\/not-there\.txt: missing on the host; not synced/);
    assert.equal(await guest('git config --global user.name'), 'Ada Lovelace\n');
    assert.equal(await guest('git config --global user.email'), 'ada@example.invalid\n');
    assert.equal(await guest('stat -c "%a %U:%G" /root/.config/tool/token'), '640 root:root\n');
    assert.equal(await guest('cat /root/.config/tool/token'), SECRET_1);
    const pub = readFileSync(join(home, '.ssh', 'id_ed25519.pub'), 'utf8').trim();
    const keys = (await guest('cat /root/.ssh/authorized_keys')).split('\n');
    assert.ok(keys.includes(pub), 'the user key is authorized');
    assert.ok(keys.length >= 2, "banger's own key is kept");
  });

  step("plain ssh with the user's own key gets in", async () => {
    const v = await show();
    const known = join(E2E_HOME, 'vms', v.id, 'known_hosts');
    const out = execFileSync(
      'ssh',
      [
        '-i', join(home, '.ssh', 'id_ed25519'),
        '-o', 'IdentitiesOnly=yes',
        '-o', 'BatchMode=yes',
        '-o', `UserKnownHostsFile=${known}`,
        '-o', 'StrictHostKeyChecking=yes',
        '-o', `HostKeyAlias=${VM}.vm`,
        '-p', String(v.network.sshPort),
        `root@${v.network.hostAddress}`,
        'echo in-as-$(id -un)',
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    assert.equal(out, 'in-as-root\n');
  });

  step('vm show lists what was synced, never contents', async () => {
    const v = await show();
    assert.ok(v.synced);
    assert.deepEqual(v.synced.git, ['user.name', 'user.email']);
    assert.deepEqual(v.synced.sshKeys, ['~/.ssh/id_ed25519.pub']);
    assert.deepEqual(v.synced.files, [{ host: '~/.config/tool/token', guest: '/root/.config/tool/token', mode: '0640' }]);
    assert.equal(v.synced.warnings.length, 1);
    const text = (await bangerOk(['vm', 'show', VM])).stdout;
    assert.match(text, /Synced:.*~\/\.config\/tool\/token -> \/root\/\.config\/tool\/token \(0640\)/);
    assert.doesNotMatch(JSON.stringify(v) + text, new RegExp(SECRET_1));
  });

  step('vm sync copies an edited file again; the key is not added twice', async () => {
    writeFileSync(join(home, '.config', 'tool', 'token'), SECRET_2);
    const r = await bangerOk(['vm', 'sync', VM], 0, { env });
    assert.match(r.stderr, /synced into e2e-sync: git user\.name, user\.email; ssh keys ~\/\.ssh\/id_ed25519\.pub/);
    assert.equal(await guest('cat /root/.config/tool/token'), SECRET_2);
    const pub = readFileSync(join(home, '.ssh', 'id_ed25519.pub'), 'utf8').trim();
    const keys = (await guest('cat /root/.ssh/authorized_keys')).split('\n').filter((l) => l === pub);
    assert.equal(keys.length, 1);
  });

  step('--no-sync on a restart copies nothing', async () => {
    const before = (await show()).synced!.at;
    writeFileSync(join(home, '.config', 'tool', 'token'), 'token-three-never-copied');
    await bangerOk(['vm', 'restart', '--no-sync', VM], 0, { env, timeoutMs: 600_000 });
    assert.equal(await guest('cat /root/.config/tool/token'), SECRET_2, 'the work disk keeps the last synced copy');
    assert.equal((await show()).synced!.at, before);
  });

  step("no synced file's contents reach the daemon's log", () => {
    const logs = join(E2E_HOME, 'logs');
    for (const f of readdirSync(logs)) {
      const text = readFileSync(join(logs, f), 'utf8');
      for (const secret of [SECRET_1, SECRET_2]) assert.ok(!text.includes(secret), `${f} contains a synced secret`);
    }
    return Promise.resolve();
  });
});
