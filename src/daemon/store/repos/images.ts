import type { Db } from '../db.js';
import type { ImageFileInfo, ImageInfo } from '../../../protocol/image.js';

/** What the store keeps of an image: its wire shape minus what is derived (the VMs using it). */
export type ImageRecord = Omit<ImageInfo, 'usedBy'>;

interface Row {
  id: string;
  name: string;
  status: ImageRecord['status'];
  kernel_version: string | null;
  files_json: string;
  params_json: string;
  build_seconds: number | null;
  error: string | null;
  created_at: string;
}

const fromRow = (r: Row): ImageRecord => ({
  id: r.id,
  name: r.name,
  status: r.status,
  kernelVersion: r.kernel_version,
  files: JSON.parse(r.files_json) as ImageFileInfo[],
  params: JSON.parse(r.params_json) as ImageRecord['params'],
  buildSeconds: r.build_seconds,
  error: r.error,
  createdAt: r.created_at,
});

export class ImageRepo {
  constructor(private readonly db: Db) {}

  list(): ImageRecord[] {
    return (this.db.prepare('SELECT * FROM images ORDER BY name').all() as Row[]).map(fromRow);
  }

  byName(name: string): ImageRecord | undefined {
    const r = this.db.prepare('SELECT * FROM images WHERE name = ?').get(name) as Row | undefined;
    return r && fromRow(r);
  }

  byId(id: string): ImageRecord | undefined {
    const r = this.db.prepare('SELECT * FROM images WHERE id = ?').get(id) as Row | undefined;
    return r && fromRow(r);
  }

  insert(img: ImageRecord): void {
    this.db
      .prepare(
        `INSERT INTO images (id, name, status, kernel_version, files_json, params_json, build_seconds, error, created_at)
         VALUES (@id, @name, @status, @kernelVersion, @files, @params, @buildSeconds, @error, @createdAt)`,
      )
      .run({ ...img, files: JSON.stringify(img.files), params: JSON.stringify(img.params) });
  }

  update(id: string, patch: Partial<Omit<ImageRecord, 'id' | 'name' | 'createdAt'>>): void {
    const cur = this.byId(id);
    if (!cur) return;
    const next = { ...cur, ...patch };
    this.db
      .prepare(
        `UPDATE images SET status=@status, kernel_version=@kernelVersion, files_json=@files, params_json=@params,
         build_seconds=@buildSeconds, error=@error WHERE id=@id`,
      )
      .run({ ...next, files: JSON.stringify(next.files), params: JSON.stringify(next.params) });
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM images WHERE id = ?').run(id);
  }
}
