import { Readable } from 'node:stream';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { VmSyncInfo } from '../../../protocol/vm.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { SyncEntry } from '../../../shared/config.js';
import type { GuestSession } from '../../guest/session.js';
import { runGuestScript } from '../workspace/guest-output.js';
import { collectHostIdentity } from './host.js';
import { syncScript } from './guest-script.js';

export interface IdentitySyncDeps {
  run: CommandRunner;
  /** config.json's `sync` entries, read at each sync so an edit applies without a daemon restart. */
  entries: () => readonly SyncEntry[];
  /** Whose home to read when the client names none: the daemon's user's. */
  defaultHome: string;
  now: () => Date;
}

/** How long the guest half may stay silent: it is a few small writes. */
const GUEST_IDLE_TIMEOUT_MS = 30_000;

/**
 * Puts the invoking user's git identity, SSH public keys and configured files into a running guest (at
 * every start and on `banger vm sync`), and says what it did: paths and key names, never contents.
 */
export class IdentitySync {
  constructor(private readonly d: IdentitySyncDeps) {}

  async sync(session: GuestSession, home: string | undefined, signal?: AbortSignal): Promise<VmSyncInfo> {
    const id = await collectHostIdentity(home ?? this.d.defaultHome, this.d.entries(), { run: this.d.run }, signal);
    const r = await runGuestScript(
      session,
      'sh -s',
      {
        maxStdoutBytes: 64 * 1024,
        maxStderrBytes: 4096,
        idleTimeoutMs: GUEST_IDLE_TIMEOUT_MS,
        what: 'the identity sync',
        tooLarge: () => new BangerError(ErrorCode.Internal, 'the guest wrote too much output during the identity sync'),
      },
      { stdin: Readable.from([Buffer.from(syncScript(id))]), signal },
    );
    if (r.code !== 0)
      throw new BangerError(ErrorCode.FailedPrecondition, `syncing into the guest failed (exit ${r.code}): ${r.stderr.trim()}`, {
        hint: 'check the guest with `banger vm ssh NAME`, then run `banger vm sync NAME` again',
      });
    const warnings = [...id.warnings];
    const gitSet = !r.stderr.includes('no git in the guest');
    if (!gitSet) warnings.push('no git in the guest: git identity not set');
    return {
      at: this.d.now().toISOString(),
      git: gitSet ? (['name', 'email'] as const).filter((k) => id.git[k] !== undefined).map((k) => `user.${k}`) : [],
      sshKeys: id.keys.map((k) => k.file),
      files: id.files.map(({ host, guest, mode }) => ({ host, guest, mode })),
      warnings,
    };
  }
}
