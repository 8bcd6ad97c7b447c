/**
 * Numbered schema migrations. Each runs once, inside a transaction, and is recorded in schema_migrations.
 * Never edit a shipped migration: add the next number.
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'images and vms',
    sql: `
      CREATE TABLE images (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        status        TEXT NOT NULL CHECK (status IN ('building', 'ready', 'failed')),
        kernel_version TEXT,
        files_json    TEXT NOT NULL DEFAULT '[]',
        params_json   TEXT NOT NULL,
        build_seconds REAL,
        error         TEXT,
        created_at    TEXT NOT NULL
      );
      CREATE TABLE vms (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL UNIQUE,
        image_id       TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
        state          TEXT NOT NULL CHECK (state IN ('created','starting','running','stopping','stopped','error')),
        vcpus          INTEGER NOT NULL CHECK (vcpus > 0),
        memory_mib     INTEGER NOT NULL CHECK (memory_mib > 0),
        disk_size_mib  INTEGER NOT NULL CHECK (disk_size_mib > 0),
        vmm            TEXT NOT NULL,
        accel_choice   TEXT NOT NULL DEFAULT 'auto' CHECK (accel_choice IN ('auto','kvm','tcg')),
        accel          TEXT,
        network_mode   TEXT NOT NULL DEFAULT 'user',
        host_address   TEXT NOT NULL,
        ssh_port       INTEGER NOT NULL,
        guest_address  TEXT NOT NULL,
        egress         INTEGER NOT NULL DEFAULT 0,
        mac            TEXT NOT NULL,
        dir            TEXT NOT NULL,
        last_error     TEXT,
        created_at     TEXT NOT NULL,
        started_at     TEXT,
        updated_at     TEXT NOT NULL
      );
      CREATE INDEX vms_image ON vms(image_id);
    `,
  },
  {
    version: 2,
    name: 'vm workspaces',
    sql: `
      ALTER TABLE vms ADD COLUMN guest_path TEXT;
      ALTER TABLE vms ADD COLUMN source_path TEXT;
      ALTER TABLE vms ADD COLUMN head_commit TEXT;
      ALTER TABLE vms ADD COLUMN base_commit TEXT;
      ALTER TABLE vms ADD COLUMN include_untracked INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE vms ADD COLUMN prepared_at TEXT;
    `,
  },
  {
    version: 3,
    name: 'per-VM loopback addresses',
    sql: `
      UPDATE vms SET network_mode = 'loopback' WHERE network_mode = 'user';
    `,
  },
  {
    version: 4,
    name: 'guest agent per VM',
    sql: `
      ALTER TABLE vms ADD COLUMN agent INTEGER NOT NULL DEFAULT 1;
    `,
  },
  {
    version: 5,
    name: 'identity sync per VM',
    sql: `
      ALTER TABLE vms ADD COLUMN synced TEXT;
    `,
  },
  {
    version: 6,
    name: 'warm pool VMs',
    sql: `
      ALTER TABLE vms ADD COLUMN pool TEXT;
    `,
  },
];
