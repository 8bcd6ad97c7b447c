import { randomBytes } from 'node:crypto';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { shq } from '../../guest/shell.js';
import { IMPORT_BASE_REF, PRELUDE, REF_ID_FN, WorkspaceScriptExit, validateGuestPath } from './guest-scripts.js';

/**
 * The guest side of `workspace export`: the script that prints the workspace's changes since its import (a
 * patch, or with `nameOnly` the changed paths), and the parser of the name-only output. Pure but for the random
 * name of its index copy, like the other script builders in guest-scripts.ts, whose PRELUDE and exit statuses it
 * uses; the host reads the patch with patch.ts.
 */

/** The export's copy of the index is `/tmp/<this><random hex>` in the guest. */
const EXPORT_INDEX_PREFIX = 'banger-export-index.';

export interface ExportScriptOptions {
  guestPath: string;
  /** Diff against this commit-ish of the guest repo instead of IMPORT_BASE_REF. */
  baseCommit?: string;
  /**
   * Print `git diff-index --name-status -z` records (parse with parseNameStatus) instead of a patch.
   * Without it the host derives the file list from the patch (patch.ts parsePatchFiles).
   */
  nameOnly?: boolean;
}

/**
 * The export script: prints on stdout a binary-safe patch (`git apply`-able at the host repo's top
 * level, `a/` and `b/` prefixes, full blob ids) from the import base to the workspace as it is now:
 * guest commits, uncommitted edits, new untracked files (.gitignore'd ones excluded), deletions,
 * mode changes and symlinks.
 *
 * It changes nothing the user sees: the working tree state is captured with a copy of the real
 * index in a temporary file (GIT_INDEX_FILE) and `git add -A`; HEAD, refs, the index and the files
 * stay as they are (new blobs may be written to the object store). Plumbing (`git diff-index --cached`
 * against the base, the copy being the other side) with explicit prefixes keeps user diff config
 * (noprefix, color, external diff, renames) out of the patch.
 *
 * Every process costs tens of milliseconds in an emulated guest (a coreutils one up to a tenth of a
 * second), so three run in turn (cp, git add, git diff-index): the import base is read from its ref
 * file (git is asked only when that is packed), the copy's name comes from the host instead of mktemp,
 * no tree is written (the diff is taken against the index itself) and the copy is removed in the
 * background once the patch is out.
 */
export function buildExportScript(o: ExportScriptOptions): string {
  validateGuestPath(o.guestPath);
  if (
    o.baseCommit !== undefined &&
    (o.baseCommit === '' || o.baseCommit.startsWith('-') || /[\0\n]/.test(o.baseCommit))
  ) {
    throw new BangerError(ErrorCode.InvalidArgument, `invalid base commit ${JSON.stringify(o.baseCommit)}`, {
      hint: 'pass a commit id or ref of the guest repository',
    });
  }
  const names = 'git diff-index --cached -r -z --name-status --no-renames "$base"';
  const patch =
    'git diff-index --cached -r -p --binary --full-index --no-renames --no-color --no-ext-diff --no-textconv --src-prefix=a/ --dst-prefix=b/ "$base"';
  const diff = o.nameOnly ? names : patch;
  return `${PRELUDE}dest=${shq(o.guestPath)}
base_ref=${shq(o.baseCommit ?? '')}
cd -- "$dest" 2>/dev/null || fail ${WorkspaceScriptExit.NoWorkspace} "no workspace at $dest: import one first"
[ -d .git ] || fail ${WorkspaceScriptExit.NoWorkspace} "$dest is not a banger workspace (no .git): import one first"
${REF_ID_FN}if [ -n "$base_ref" ]; then
  base=$(git rev-parse -q --verify "$base_ref^{commit}") ||
    fail ${WorkspaceScriptExit.BadBase} "$base_ref does not name a commit in the workspace: pass a commit id or ref of the guest repository"
else
  ref_id ${IMPORT_BASE_REF}; base=$r
  if [ -z "$base" ]; then
    base=$(git rev-parse -q --verify "${IMPORT_BASE_REF}^{commit}") ||
      fail ${WorkspaceScriptExit.NoWorkspace} "$dest has no import base (${IMPORT_BASE_REF}): import again, or pass --base-commit"
  fi
fi
index=/tmp/${EXPORT_INDEX_PREFIX}${randomBytes(8).toString('hex')}
# (The removal runs on after the script with its output elsewhere, so the patch's reader is not kept waiting.)
trap 'unbeat; rm -f -- "$index" "$index.lock" </dev/null >/dev/null 2>&1 &' EXIT
trap 'exit 130' HUP INT TERM
beat
if [ -f .git/index ]; then cp -- .git/index "$index"; fi
GIT_INDEX_FILE="$index" git add -A >&2
GIT_INDEX_FILE="$index" ${diff}
`;
}

export type NameStatus = 'A' | 'D' | 'M' | 'T' | 'U' | 'X';

/** Parses `git diff-index -r -z --name-status --no-renames` output (the nameOnly export). */
export function parseNameStatus(out: Buffer | string): { status: NameStatus; path: string }[] {
  const fields = (typeof out === 'string' ? out : out.toString('utf8')).split('\0');
  const rows: { status: NameStatus; path: string }[] = [];
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const status = fields[i];
    const path = fields[i + 1];
    if (!status || path === undefined) break;
    rows.push({ status: status as NameStatus, path });
  }
  return rows;
}
