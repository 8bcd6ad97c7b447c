import Database from 'better-sqlite3';
import { BangerError, ErrorCode } from '../../errors/index.js';

/**
 * One daemon per state directory. Two CLIs that find no daemon at the same moment each start one; without
 * this both would reconcile the same VMs and the second would take over the socket. The lock is an SQLite
 * exclusive transaction on a file of its own: a kernel lock held while the process lives and released when
 * it dies, however it dies, so there is never a stale lock to clean up.
 */
export interface DaemonLock {
  release(): void;
}

/** Takes the lock at `path` or throws Conflict (another daemon holds it). */
export function acquireDaemonLock(path: string): DaemonLock {
  const db = new Database(path);
  try {
    db.pragma('busy_timeout = 0');
    db.pragma('locking_mode = EXCLUSIVE');
    db.exec('BEGIN EXCLUSIVE');
  } catch (e) {
    db.close();
    if ((e as { code?: string }).code === 'SQLITE_BUSY')
      throw new BangerError(ErrorCode.Conflict, `another bangerd is running on this state directory (it holds ${path})`, {
        hint: 'use that daemon, or stop it with `banger daemon stop`',
      });
    throw e;
  }
  return {
    release: () => {
      if (db.open) db.close();
    },
  };
}
