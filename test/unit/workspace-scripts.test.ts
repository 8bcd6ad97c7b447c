import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { PRELUDE, buildImportScript, validateGuestPath } from '../../src/daemon/services/workspace/guest-scripts.js';
import { execInWorkspace } from '../../src/daemon/services/workspace/workspace-command.js';
import { buildExportScript, parseNameStatus } from '../../src/daemon/services/workspace/export-script.js';
import { BangerError } from '../../src/errors/index.js';

const identity = { name: "Ada O'Lovelace $(rm -rf /)", email: 'a@example.com' };
const head = 'a'.repeat(40);

void describe('guest script builders', () => {
  void it('produce scripts that parse in dash and bash, with host values quoted', () => {
    const guestPath = `/root/it's a "ws" $(x) ü`;
    const scripts = [
      buildImportScript({ guestPath, headCommit: head, branch: "feat/it's", identity }),
      buildImportScript({ guestPath, headCommit: null, branch: null, identity: { name: null, email: null } }),
      buildExportScript({ guestPath }),
      buildExportScript({ guestPath, baseCommit: "v1.0'^", nameOnly: true }),
      execInWorkspace(guestPath, ['echo', "it's"]),
    ];
    for (const s of scripts) {
      for (const shell of ['dash', 'bash']) execFileSync(shell, ['-n', '-c', s]);
    }
    assert.ok(scripts[0]!.includes(`dest='/root/it'\\''s a "ws" $(x) ü'`));
    assert.ok(scripts[0]!.includes(`user_name='Ada O'\\''Lovelace $(rm -rf /)'`));
  });

  void it('refuse guest paths that are not absolute, normalized directories below /', () => {
    for (const p of ['relative/ws', '/', '//', '/a/../b', '/a/./b', '/a//b', '/a/', '/a\0b']) {
      assert.throws(
        () => validateGuestPath(p),
        (e: unknown) => e instanceof BangerError && e.code === 'InvalidArgument',
        p,
      );
    }
    validateGuestPath('/root/work/my project');
    assert.throws(() => buildImportScript({ guestPath: '/w', headCommit: 'HEAD; rm -rf /', branch: null, identity }));
    assert.throws(() => buildExportScript({ guestPath: '/w', baseCommit: '--output=/etc/passwd' }));
    assert.throws(() => execInWorkspace('/w', []), /no command given/);
  });

  void it('run the command under mise when there is one, always with the exit status of the command', () => {
    assert.match(execInWorkspace("/w/it's", ['make', 'test'], true), /^cd '\/w\/it'\\''s' 2>\/dev\/null \|\| .*\nexec mise exec -- make test$/);
    assert.match(execInWorkspace('/w', ['ls', 'a b'], false), /^cd \/w 2>\/dev\/null \|\| .*\nexec ls 'a b'$/);
    assert.match(execInWorkspace('/w', ['ls'], undefined), /if command -v mise/);
  });

  void it('parse name-status records', () => {
    assert.deepEqual(parseNameStatus("M\0a b\0D\0it's\nnewline\0"), [
      { status: 'M', path: 'a b' },
      { status: 'D', path: "it's\nnewline" },
    ]);
    assert.deepEqual(parseNameStatus(Buffer.alloc(0)), []);
  });

  // The import, export and re-sync scripts all start their heartbeat this way: a loop left behind holds the
  // command's stderr open, and the host then waits for it for ever (one in three of these survived a SIGTERM).
  void it('a heartbeat stopped right after it started ends with the script, and so does one never stopped', { timeout: 60_000 }, async () => {
    const closesWithin = (script: string, ms: number) =>
      new Promise<boolean>((resolve) => {
        const p = spawn('dash', ['-c', script], { stdio: ['ignore', 'ignore', 'pipe'] });
        p.stderr.resume();
        const t = setTimeout(() => {
          // Closing our end makes a loop left behind die of SIGPIPE at its next line, so this run still ends.
          p.stderr.destroy();
          resolve(false);
        }, ms);
        // 'close' comes once every holder of the stderr pipe has gone, a loop left behind included.
        p.on('close', () => {
          clearTimeout(t);
          resolve(true);
        });
      });
    const stopped = `${PRELUDE}trap unbeat EXIT\ntrap 'exit 130' HUP INT TERM\nbeat\n`;
    for (let i = 0; i < 40; i++) assert.ok(await closesWithin(stopped, 2000), `run ${i + 1} of 40: its heartbeat outlived the script`);
    // Killed without its EXIT trap: the loop sees its script gone at its next beat (HEARTBEAT_SECONDS).
    const killed = `${PRELUDE}beat\nkill -KILL $$\n`;
    assert.ok(await closesWithin(killed, 12_000), 'a heartbeat whose script was killed ended on its own');
  });
});
