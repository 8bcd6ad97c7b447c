import Database from 'better-sqlite3';
import { BangerError, ErrorCode } from '../../errors/index.js';
import { MIGRATIONS, type Migration } from './migrations/index.js';

export type Db = Database.Database;

/**
 * Opens (creating if needed) the state database: WAL, synchronous FULL, foreign keys on, migrations
 * applied. A file that cannot be opened or is not a banger database is a FailedPrecondition naming it.
 */
export function openDatabase(path: string, migrations: readonly Migration[] = MIGRATIONS): Db {
  let db: Db | undefined;
  try {
    db = new Database(path);
    db.pragma('journal_mode = WAL');
    // WAL's default (NORMAL) may lose the last commits on power loss; those are VM creations and
    // deletions whose disks, taps and processes already exist, so each commit must be durable (FULL:
    // fsync of the WAL at every commit). banger writes a few rows per user action: the cost is nil.
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
  } catch (e) {
    db?.close();
    throw new BangerError(
      ErrorCode.FailedPrecondition,
      `cannot open the state database ${path}: ${(e as Error).message}`,
      {
        hint: 'check that the file is a banger state database and its directory is writable (see BANGER_HOME); move a damaged file aside to start with an empty state',
        cause: e,
      },
    );
  }
  try {
    migrate(db, migrations);
  } catch (e) {
    db.close();
    throw e;
  }
  return db;
}

export function schemaVersion(db: Db): number {
  const row = db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null };
  return row.v ?? 0;
}

/** Applies every migration newer than the database, each in its own transaction. Returns the versions applied. */
export function migrate(db: Db, migrations: readonly Migration[] = MIGRATIONS): number[] {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`);
  const current = schemaVersion(db);
  const latestKnown = Math.max(0, ...migrations.map((m) => m.version));
  if (current > latestKnown) {
    throw new BangerError(
      ErrorCode.FailedPrecondition,
      `the state database is at schema version ${current}, newer than this banger understands (${latestKnown})`,
      { hint: 'upgrade banger to the version that last used this BANGER_HOME, or point BANGER_HOME elsewhere' },
    );
  }
  const applied: number[] = [];
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (m.version <= current) continue;
    try {
      db.transaction(() => {
        db.exec(m.sql);
        db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(
          m.version,
          m.name,
          new Date().toISOString(),
        );
      })();
    } catch (e) {
      // The transaction rolled back: the database is still whole, at the previous version.
      throw new BangerError(
        ErrorCode.Internal,
        `migrating the state database to version ${m.version} (${m.name}) failed: ${(e as Error).message}`,
        {
          hint: 'the database was left at the previous version; report this as a banger bug, with the message',
          cause: e,
        },
      );
    }
    applied.push(m.version);
  }
  return applied;
}
