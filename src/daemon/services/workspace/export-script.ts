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
/**
 * In the workspace's .git while the last export found untracked files: the next one expects some again and
 * diffs through the index copy at once, instead of first through the real index (see buildExportScript).
 */
const UNTRACKED_HINT = '.git/banger-export-untracked';

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
 * mode changes and symlinks: what `git add -A` into a copy of the real index, then `git diff-index
 * --cached` against the base, would print.
 *
 * It changes nothing the user sees: HEAD, refs, the index and the files stay as they are (with untracked
 * files, new blobs may be written to the object store, and UNTRACKED_HINT to .git). Plumbing with explicit
 * prefixes keeps user diff config (noprefix, color, external diff, renames) out of the patch; a submodule's
 * uncommitted changes are left out, as `git add` leaves them.
 *
 * Every process costs tens of milliseconds in an emulated guest, and so does each pass over a large
 * tree's index: `git add -A` into a copy of the index copies, walks and rewrites all of it. Here
 * `git ls-files -o` lists the untracked files while a copy of the index is made, on the guest's other vCPU,
 * and the patch is the working tree diffed against the base (`git diff-index` without --cached, which reads
 * only the files whose stat data changed and prints nothing for one that only looks changed): through the
 * real index when nothing is untracked, else through the copy with the untracked files added. Which one is
 * guessed before the list is known, from the last export (UNTRACKED_HINT): the real index's diff runs
 * beside the listing, and is thrown away when the guess was wrong. The copy's name comes from the host, not
 * mktemp; the import base is read from its ref file (git is asked only when that is packed); the temporary
 * files are removed in the background once the patch is out. The name-only list (`workspace compare`) is
 * made the `git add -A` way: a raw diff-index names files that only look changed too.
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
  const patchArgs =
    '-r -p --binary --full-index --no-renames --no-color --no-ext-diff --no-textconv --ignore-submodules=dirty --src-prefix=a/ --dst-prefix=b/ "$base"';
  const body = o.nameOnly
    ? `if [ -f .git/index ]; then cp -- .git/index "$index"; fi
GIT_INDEX_FILE="$index" git add -A >&2
GIT_INDEX_FILE="$index" ${names}
`
    : `# (A nested repository is listed as DIR/: added as DIR it becomes a gitlink, as \`git add -A\` makes it.)
{ git ls-files -z -o --exclude-standard || : > "$index.failed"; } | sed -z 's|/$||' > "$index.o" &
untracked_job=$!
if [ -f .git/index ]; then cp -- .git/index "$index" & copy_job=$!; else copy_job=; fi
listed() {
  wait "$untracked_job"
  [ ! -e "$index.failed" ] || fail 1 "git ls-files failed in $dest"
  if [ -n "$copy_job" ]; then wait "$copy_job"; fi
}
through_copy() {
  GIT_INDEX_FILE="$index" git update-index --add --replace -z --stdin < "$index.o"
  GIT_INDEX_FILE="$index" git diff-index ${patchArgs}
}
if [ -e ${UNTRACKED_HINT} ]; then
  listed
  if [ -s "$index.o" ]; then through_copy; else rm -f -- ${UNTRACKED_HINT}; git diff-index ${patchArgs}; fi
else
  git diff-index ${patchArgs} > "$index.p"
  listed
  if [ -s "$index.o" ]; then : > ${UNTRACKED_HINT} 2>/dev/null || true; through_copy; else cat -- "$index.p"; fi
fi
`;
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
trap 'unbeat; rm -f -- "$index" "$index.lock" "$index.o" "$index.p" "$index.failed" </dev/null >/dev/null 2>&1 &' EXIT
trap 'exit 130' HUP INT TERM
beat
${body}
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
