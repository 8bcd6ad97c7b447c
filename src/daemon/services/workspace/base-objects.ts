import { createHash } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import type { ManifestEntries } from './manifest.js';

/**
 * A re-sync's import base made on the host: the git objects (trees and the commit) the guest would otherwise
 * make with `git write-tree` and `git commit-tree`, and the entries its import base's index takes. The host
 * knows the new state exactly (its manifest: every path's mode and object id, and the tree id git computed),
 * so the guest only copies the objects in and points the import base ref at the commit; the guest spends
 * a tenth of a second of emulated CPU on each git process it is spared.
 *
 * They are used only for a small re-sync (pack.ts MAX_HOST_BASE_BYTES, its files' blobs go along) and only
 * when every file it sends hashes to the manifest's object id: a file changed since the manifest was made, or
 * one that git filters (the blob is not the file), leaves the guest to build the base itself, as before, and
 * the host then compares the tree the guest reports.
 */

export type GitHash = 'sha1' | 'sha256';

/** The object format of a repository whose object ids look like `oid`. */
export function hashOf(oid: string): GitHash {
  return oid.length === 64 ? 'sha256' : 'sha1';
}

function objectId(hash: GitHash, type: string, body: Buffer): string {
  return createHash(hash).update(`${type} ${body.length}\0`).update(body).digest('hex');
}

/** A loose object: its path under `.git/objects` and its zlib-compressed bytes. */
export interface LooseObject {
  path: string;
  data: Buffer;
}

/** A git object of `type` (blob, tree, commit) as a loose object, with its id. */
export function looseObject(hash: GitHash, type: string, body: Buffer): { oid: string; object: LooseObject } {
  const oid = objectId(hash, type, body);
  const data = deflateSync(Buffer.concat([Buffer.from(`${type} ${body.length}\0`), body]), { level: 1 });
  return { oid, object: { path: `${oid.slice(0, 2)}/${oid.slice(2)}`, data } };
}

interface TreeEntry {
  /** The name as git sorts it: a directory's with a trailing slash. */
  key: Buffer;
  name: string;
  mode: string;
  oid: string;
}

/**
 * Every directory's tree object of a manifest, by directory path ('' is the root): git's tree format
 * (`MODE NAME\0` and the raw object id per entry, sorted by name, a directory's name as if it ended in
 * a slash).
 */
export function buildTrees(entries: ManifestEntries, hash: GitHash): Map<string, { oid: string; body: Buffer }> {
  const children = new Map<string, TreeEntry[]>([['', []]]);
  const dirEntry = (dir: string): void => {
    if (children.has(dir)) return;
    children.set(dir, []);
    const slash = dir.lastIndexOf('/');
    const parent = slash < 0 ? '' : dir.slice(0, slash);
    dirEntry(parent);
    const name = dir.slice(slash + 1);
    children.get(parent)!.push({ key: Buffer.from(`${name}/`), name, mode: '40000', oid: '' });
  };
  for (const [path, value] of entries) {
    const slash = path.lastIndexOf('/');
    const dir = slash < 0 ? '' : path.slice(0, slash);
    dirEntry(dir);
    const name = path.slice(slash + 1);
    const space = value.indexOf(' ');
    children.get(dir)!.push({ key: Buffer.from(name), name, mode: value.slice(0, space), oid: value.slice(space + 1) });
  }
  const trees = new Map<string, { oid: string; body: Buffer }>();
  // Deepest first: a directory's tree needs its subdirectories' ids.
  const dirs = [...children.keys()].sort((a, b) => depth(b) - depth(a));
  for (const dir of dirs) {
    const list = children.get(dir)!.sort((a, b) => Buffer.compare(a.key, b.key));
    const parts: Buffer[] = [];
    for (const e of list) {
      const oid = e.mode === '40000' ? trees.get(dir === '' ? e.name : `${dir}/${e.name}`)!.oid : e.oid;
      parts.push(Buffer.from(`${e.mode} ${e.name}\0`), Buffer.from(oid, 'hex'));
    }
    const body = Buffer.concat(parts);
    trees.set(dir, { oid: objectId(hash, 'tree', body), body });
  }
  return trees;
}

function depth(dir: string): number {
  if (dir === '') return 0;
  let n = 1;
  for (let i = dir.indexOf('/'); i >= 0; i = dir.indexOf('/', i + 1)) n++;
  return n;
}

/** What the guest takes of a host-made import base. */
export interface BaseObjects {
  commit: string;
  tree: string;
  /** The trees of the directories that changed, and the commit (the blobs are the sender's). */
  objects: LooseObject[];
  /** `git update-index -z --index-info` input: the changed paths' new entries (mode 0: removed). */
  indexInfo: Buffer;
}

export interface BaseObjectsInput {
  /** The host's state now (the new import base), with its tree id as git computed it. */
  manifest: { tree: string; entries: ManifestEntries };
  /** Paths written and deleted since the last import base. */
  write: readonly string[];
  delete: readonly string[];
  /** The commit the import base's commit has as parent (the host's HEAD); null without commits. */
  parent: string | null;
  /** Seconds since the epoch, for the commit's dates. */
  time: number;
}

/**
 * The new import base's objects, made as the guest's `git write-tree` and `git commit-tree` would (author
 * and committer "banger <banger@localhost>", message "banger import base"), or null when the trees built
 * from the manifest do not give git's tree id (the guest then builds the base itself).
 */
export function baseObjects(i: BaseObjectsInput): BaseObjects | null {
  const hash = hashOf(i.manifest.tree);
  const trees = buildTrees(i.manifest.entries, hash);
  const root = trees.get('')!;
  if (root.oid !== i.manifest.tree) return null;
  const objects: LooseObject[] = [];
  const sent = new Set<string>();
  for (const path of [...i.write, ...i.delete]) {
    for (let dir = path; ; ) {
      const slash = dir.lastIndexOf('/');
      dir = slash < 0 ? '' : dir.slice(0, slash);
      if (sent.has(dir)) break;
      sent.add(dir);
      const t = trees.get(dir);
      // A directory all of whose files went is in no tree now (its parent's changed tree leaves it out).
      if (t) objects.push(looseObject(hash, 'tree', t.body).object);
      if (dir === '') break;
    }
  }
  const who = `banger <banger@localhost> ${i.time} +0000`;
  const commit = looseObject(
    hash,
    'commit',
    Buffer.from(`tree ${root.oid}\n${i.parent ? `parent ${i.parent}\n` : ''}author ${who}\ncommitter ${who}\n\nbanger import base\n`),
  );
  objects.push(commit.object);
  const zero = '0'.repeat(root.oid.length);
  // Removals first: a file that became a directory goes before the files under it come.
  const info: string[] = i.delete.map((path) => `0 ${zero}\t${path}\0`);
  for (const path of i.write) {
    const v = i.manifest.entries.get(path);
    if (v === undefined) return null;
    info.push(`${v}\t${path}\0`);
  }
  return { commit: commit.oid, tree: root.oid, objects, indexInfo: Buffer.from(info.join('')) };
}
