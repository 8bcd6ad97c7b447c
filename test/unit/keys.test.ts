import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { encodeOpenSshEd25519, generateEd25519 } from '../../src/daemon/guest/keys.js';
import { publicKeyBlob } from '../../src/daemon/guest/ssh.js';
import { scratchDir } from '../helpers/scratch.js';

test('OpenSSH loads every generated key, including public keys with leading zero bytes', () => {
  const dir = scratchDir('banger-keys-');
  try {
    const seed = Buffer.alloc(32, 7);
    const cases = [
      encodeOpenSshEd25519(seed, Buffer.concat([Buffer.from([0, 0]), Buffer.alloc(30, 9)]), 'zeros.vm'),
      ...Array.from({ length: 20 }, (_, i) => generateEd25519(`k${i}.vm`)),
    ];
    for (const [i, kp] of cases.entries()) {
      const f = join(dir, `k${i}`);
      writeFileSync(f, kp.privateKey, { mode: 0o600 });
      if (i > 0) {
        // ssh-keygen derives the public key from the private file: it must match ours exactly.
        const r = spawnSync('ssh-keygen', ['-y', '-f', f], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stdout.trim().split(' ').slice(0, 2).join(' '), kp.publicKey.split(' ').slice(0, 2).join(' '));
      }
      assert.equal(publicKeyBlob(kp.publicKey).length, 4 + 11 + 4 + 32);
      const parsed = ssh2.utils.parseKey(kp.privateKey);
      assert.ok(!(parsed instanceof Error), String(parsed));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
