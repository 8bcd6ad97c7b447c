import { BangerError, ErrorCode } from '../../../errors/index.js';

/**
 * The changed-file list of an export, read from the patch itself: what `git apply` will change is
 * exactly what the user is shown. The patch comes from the guest, so it is parsed strictly: anything
 * but the sections `git diff-index -p --binary` writes (a `diff --git` header, extended header lines,
 * text hunks whose line counts add up, or a `GIT binary patch`) is refused, so no section that
 * `git apply` would act on can hide from the list.
 */

/** A: added, D: deleted, M: modified (content or mode), T: type changed, R/C: renamed/copied (path is the new name). */
export type PatchStatus = 'A' | 'D' | 'M' | 'T' | 'R' | 'C';

export interface PatchChange {
  status: PatchStatus;
  path: string;
  /** Lines the patch adds and removes in this file (0 and 0 for a binary change or a mode change only). */
  linesAdded: number;
  linesRemoved: number;
  /** The content change is a binary patch (no line counts). */
  binary: boolean;
}

function unreadable(why: string): BangerError {
  return new BangerError(ErrorCode.Internal, `the workspace export sent a patch banger cannot read: ${why}`, {
    hint: 'look at the workspace in the guest (`git status`, `git diff`), or export with --name-only',
  });
}

const ESCAPES: Record<string, number> = { a: 7, b: 8, t: 9, n: 10, v: 11, f: 12, r: 13, '"': 34, '\\': 92 };

/**
 * Reads a C-style quoted name as git writes it (`"a/x\ty\303\274"`) starting at `s[at]` (a `"`),
 * with `s` holding one byte per char (latin1). Returns the raw bytes as latin1 and the index after
 * the closing quote.
 */
export function unquoteCStyle(s: string, at: number): { bytes: string; end: number } {
  let out = '';
  let i = at + 1;
  while (i < s.length) {
    const c = s[i] as string;
    if (c === '"') return { bytes: out, end: i + 1 };
    if (c !== '\\') {
      out += c;
      i++;
      continue;
    }
    const e = s[i + 1] ?? '';
    if (/^[0-3][0-7][0-7]$/.test(s.slice(i + 1, i + 4))) {
      out += String.fromCharCode(parseInt(s.slice(i + 1, i + 4), 8));
      i += 4;
    } else if (e in ESCAPES) {
      out += String.fromCharCode(ESCAPES[e] as number);
      i += 2;
    } else throw unreadable(`bad escape in a quoted name`);
  }
  throw unreadable('a quoted name is not closed');
}

/** A name as written after `rename to ` etc.: quoted, or verbatim to the end of the line. */
function nameAt(s: string): string {
  if (!s.startsWith('"')) return s;
  const q = unquoteCStyle(s, 0);
  if (q.end !== s.length) throw unreadable('text after a quoted name');
  return q.bytes;
}

/** The two names of `diff --git A B` (each possibly quoted), or null when they cannot be told apart. */
function gitHeaderNames(rest: string): { a: string; b: string } | null {
  if (rest.startsWith('"')) {
    const q = unquoteCStyle(rest, 0);
    if (rest[q.end] !== ' ') return null;
    return { a: q.bytes, b: nameAt(rest.slice(q.end + 1)) };
  }
  if (rest.endsWith('"')) {
    for (let i = rest.indexOf(' "'); i !== -1; i = rest.indexOf(' "', i + 1)) {
      try {
        return { a: rest.slice(0, i), b: nameAt(rest.slice(i + 1)) };
      } catch {
        // not where the quoted name starts: try the next candidate
      }
    }
    return null;
  }
  // Unquoted names may contain spaces; without a rename both names are the same, so the line is
  // `a/N b/N` and its middle is the separator (how git apply reads it too).
  if (rest.length % 2 === 1) {
    const n = (rest.length - 1) / 2;
    const a = rest.slice(0, n);
    const b = rest.slice(n + 1);
    if (rest[n] === ' ' && a.slice(2) === b.slice(2)) return { a, b };
  }
  return null;
}

/** Checks a name from the patch and returns it as text (UTF-8 decoded from its bytes). */
function pathOf(bytes: string, prefix: 'a/' | 'b/' | ''): string {
  if (!bytes.startsWith(prefix)) throw unreadable(`a name lacks the ${prefix} prefix`);
  const p = Buffer.from(bytes.slice(prefix.length), 'latin1').toString('utf8');
  if (p === '' || p.startsWith('/') || p.includes('\0')) throw unreadable(`unsafe name ${JSON.stringify(p)}`);
  for (const part of p.split('/')) {
    if (part === '' || part === '.' || part === '..' || part.toLowerCase() === '.git')
      throw unreadable(`unsafe name ${JSON.stringify(p)}`);
  }
  return p;
}

interface Section {
  names: { a: string; b: string } | null;
  added: boolean;
  deleted: boolean;
  plus: number;
  minus: number;
  binary: boolean;
  renameTo?: string;
  copyTo?: string;
  minusName?: string;
  plusName?: string;
}

function finish(s: Section): PatchChange {
  const counts = { linesAdded: s.plus, linesRemoved: s.minus, binary: s.binary };
  if (s.renameTo !== undefined) return { status: 'R', path: pathOf(s.renameTo, ''), ...counts };
  if (s.copyTo !== undefined) return { status: 'C', path: pathOf(s.copyTo, ''), ...counts };
  // `--- a/N` / `+++ b/N` name one side each (a tab ends a name with a space); /dev/null for none.
  const side = (v: string | undefined) => (v === undefined || v === '/dev/null' ? undefined : nameAt(v.replace(/\t$/, '')));
  const a = side(s.minusName) ?? s.names?.a;
  const b = side(s.plusName) ?? s.names?.b;
  if (s.added) {
    if (b === undefined) throw unreadable('a new file without a name');
    return { status: 'A', path: pathOf(b, 'b/'), ...counts };
  }
  if (a === undefined || b === undefined) throw unreadable('a file header without names');
  const pa = pathOf(a, 'a/');
  if (pathOf(b, 'b/') !== pa) throw unreadable(`a change names two files without a rename: ${JSON.stringify(pa)}`);
  return { status: s.deleted ? 'D' : 'M', path: pa, ...counts };
}

const HEADER_KEYS = ['old mode ', 'new mode ', 'similarity index ', 'dissimilarity index ', 'index ', 'rename from ', 'copy from '];

/** Lists the files a binary git patch (`git diff-index -p --binary --no-renames`, `git diff-tree`, or with renames) changes. */
export function parsePatchFiles(patch: Buffer): PatchChange[] {
  const changes: PatchChange[] = [];
  let pos = 0;
  const next = (): string | null => {
    if (pos >= patch.length) return null;
    let nl = patch.indexOf(0x0a, pos);
    if (nl === -1) nl = patch.length;
    const line = patch.toString('latin1', pos, nl);
    pos = nl + 1;
    return line;
  };
  // Hunk bodies are skipped line by line without decoding them: only their first byte matters.
  const firstByte = (): number | null => (pos >= patch.length ? null : (patch[pos] as number));
  const skipLine = () => {
    const nl = patch.indexOf(0x0a, pos);
    pos = nl === -1 ? patch.length : nl + 1;
  };

  let line = next();
  while (line !== null) {
    if (!line.startsWith('diff --git ')) throw unreadable(`unexpected line ${JSON.stringify(line.slice(0, 80))}`);
    const s: Section = {
      names: gitHeaderNames(line.slice('diff --git '.length)),
      added: false,
      deleted: false,
      plus: 0,
      minus: 0,
      binary: false,
    };
    line = next();
    // Extended header lines.
    while (line !== null) {
      if (line.startsWith('new file mode ')) s.added = true;
      else if (line.startsWith('deleted file mode ')) s.deleted = true;
      else if (line.startsWith('rename to ')) s.renameTo = nameAt(line.slice('rename to '.length));
      else if (line.startsWith('copy to ')) s.copyTo = nameAt(line.slice('copy to '.length));
      else if (!HEADER_KEYS.some((k) => line?.startsWith(k))) break;
      line = next();
    }
    if (line !== null && line.startsWith('--- ')) {
      s.minusName = line.slice(4);
      line = next();
      if (line === null || !line.startsWith('+++ ')) throw unreadable('a `---` line without `+++`');
      s.plusName = line.slice(4);
      line = next();
      if (line === null || !line.startsWith('@@ ')) throw unreadable('file names without a hunk');
      while (line !== null && line.startsWith('@@ ')) {
        const m = /^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@/.exec(line);
        if (!m) throw unreadable(`bad hunk header ${JSON.stringify(line.slice(0, 80))}`);
        let old = m[1] === undefined ? 1 : Number(m[1]);
        let neu = m[2] === undefined ? 1 : Number(m[2]);
        while (old > 0 || neu > 0) {
          const c = firstByte();
          if (c === null) throw unreadable('a hunk is cut short');
          if (c === 0x20 || c === 0x0a) {
            old--;
            neu--;
          } else if (c === 0x2d) {
            old--;
            s.minus++;
          } else if (c === 0x2b) {
            neu--;
            s.plus++;
          }
          else if (c !== 0x5c) throw unreadable('a hunk line that is not context, removal or addition');
          if (old < 0 || neu < 0) throw unreadable('a hunk longer than its header says');
          skipLine();
        }
        if (firstByte() === 0x5c) skipLine(); // "\ No newline at end of file" after the last line
        line = next();
      }
    } else if (line === 'GIT binary patch') {
      s.binary = true;
      // A forward and a reverse block, each `literal N` or `delta N`, base85 lines, then an empty line.
      for (let block = 0; block < 2; block++) {
        line = next();
        if (line === null || !/^(literal|delta) \d+$/.test(line)) throw unreadable('a binary patch without data');
        for (line = next(); line !== null && line !== ''; line = next()) {
          if (!/^[A-Za-z][0-9A-Za-z!#$%&()*+;<=>?@^_`{|}~-]+$/.test(line)) throw unreadable('bad binary patch data');
        }
        if (line === null) throw unreadable('a binary patch is cut short');
      }
      line = next();
    } else if (line !== null && /^Binary files .* differ$/.test(line)) {
      s.binary = true;
      line = next();
    }
    const change = finish(s);
    // git writes a type change (file <-> symlink) as a deletion and an addition of the same path.
    const prev = changes.at(-1);
    if (prev && prev.path === change.path && prev.status === 'D' && change.status === 'A') {
      prev.status = 'T';
      prev.linesAdded += change.linesAdded;
      prev.linesRemoved += change.linesRemoved;
      prev.binary ||= change.binary;
    } else changes.push(change);
  }
  return changes;
}
