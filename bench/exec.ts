/**
 * `banger vm exec VM -- true` against OpenSSH with a ControlMaster connection into the same guest.
 * Usage: npm run build && node --import tsx bench/exec.ts [runs]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HOME, banger, report, sh, timeIt } from './common.js';

const runs = Number(process.argv[2] ?? 15);
const name = 'bench-exec';
try {
  banger(['vm', 'delete', '--force', name]);
} catch {
  /* not there */
}
banger(['vm', 'run', '--name', name, '--', 'true']);
const t = JSON.parse(banger(['vm', 'show', name, '--json'])) as { id: string; network: { hostAddress: string; sshPort: number } };
const ctl = mkdtempSync(join(tmpdir(), 'bench-ssh-'));
const sshArgs = [
  '-i', join(HOME, 'ssh', 'id_ed25519'),
  '-o', 'IdentitiesOnly=yes',
  '-o', `UserKnownHostsFile=${join(HOME, 'vms', t.id, 'known_hosts')}`,
  '-o', 'StrictHostKeyChecking=yes',
  '-o', `HostKeyAlias=${name}.vm`,
  '-o', 'ControlMaster=auto',
  '-o', `ControlPath=${ctl}/cm`,
  '-o', 'ControlPersist=120',
  '-p', String(t.network.sshPort),
  `root@${t.network.hostAddress}`,
];
try {
  sh('ssh', [...sshArgs, 'true']); // opens the master connection, like banger's daemon already holds one
  banger(['vm', 'exec', name, '--', 'true']); // warm
  const b: number[] = [];
  const base: number[] = [];
  for (let i = 0; i < runs; i++) {
    b.push(timeIt(() => banger(['vm', 'exec', name, '--', 'true'])));
    base.push(timeIt(() => sh('ssh', [...sshArgs, 'true'])));
  }
  report('vm exec -- true', b, base, 'ssh -o ControlMaster=auto true');
} finally {
  try {
    sh('ssh', ['-o', `ControlPath=${ctl}/cm`, '-O', 'exit', 'x']);
  } catch {
    /* master already gone */
  }
  rmSync(ctl, { recursive: true, force: true });
  banger(['vm', 'delete', '--force', name]);
}
