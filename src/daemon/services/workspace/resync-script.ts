import { randomBytes } from 'node:crypto';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { shq } from '../../guest/shell.js';
import type { GitIdentity } from './host-repo.js';
import {
  IMPORT_BASE_REF,
  MISE_TRUST,
  PRELUDE,
  PRINT_TREE,
  REF_ID_FN,
  SYNC_WORKSPACE,
  recordImportBase,
  WorkspaceScriptExit,
  validateGuestPath,
} from './guest-scripts.js';
import {
  BASE_INDEX_TREE,
  GUEST_CHANGES_FN,
  INDEX_MARK,
  MAX_CONFLICT_PATHS,
  NO_CTIME_ENV,
  keepBaseIndex,
} from './guest-changes.js';
import {
  TAR_BASE,
  TAR_DELETED,
  TAR_HISTORY_PACK,
  TAR_INDEX_INFO,
  TAR_TREE_DIR,
  TAR_TRUST_MISE,
  TAR_WRITTEN,
} from './pack.js';

/** A re-sync's staging directory is `.git/<this><random hex>` in the workspace. */
export const RESYNC_STAGE_PREFIX = 'banger-resync.';

export interface ResyncScriptOptions {
  guestPath: string;
  /** The import base commit the last import recorded (WorkspaceInfo.baseCommit). */
  baseCommit: string;
  /** Its tree (the last import's manifest): the import base's index is used only if it is this tree's (BASE_INDEX). */
  baseTree: string;
  /** HEAD at the last import; null for a repository without commits. */
  oldHead: string | null;
  /** The host's HEAD now. */
  newHead: string | null;
  /** The host's branch now; null when HEAD is detached. */
  branch: string | null;
  identity: GitIdentity;
  /** The staging directory's name in the workspace's `.git` (newResyncStage), the archive's stageDir. */
  stage: string;
}

/** What newResyncStage makes: RESYNC_STAGE_PREFIX and 16 hex digits. */
const STAGE_NAME = new RegExp(`^${RESYNC_STAGE_PREFIX.replace('.', '[.]')}[0-9a-f]{16}$`);

/** A re-sync's staging directory name: RESYNC_STAGE_PREFIX and 16 random hex digits. */
export function newResyncStage(): string {
  return `${RESYNC_STAGE_PREFIX}${randomBytes(8).toString('hex')}`;
}

/**
 * Whether a path may be a mise config file (mise.toml, .mise.toml, mise.local.toml, .mise/..., .config/mise/...,
 * .tool-versions): only then does a re-sync run `mise trust --all` again, which takes seconds in a TCG guest.
 */
export function mayBeMiseConfig(path: string): boolean {
  return path.split('/').some((c) => /^\.?mise/.test(c) || c === '.tool-versions');
}

const HEX = /^[0-9a-f]{40}([0-9a-f]{24})?$/;

/**
 * The re-sync script: brings a workspace the last import left from that state to the host's state
 * now, given a tar (createImportTar) of only the paths that changed, the paths to delete
 * (TAR_DELETED), the paths written (TAR_WRITTEN) and a thin pack of the new commits. Prints the new
 * import base commit on stdout.
 *
 * First it checks that the workspace is still what the last import left; nothing is changed until
 * these pass:
 * - the workspace, its repo and its import base are there and the base is the recorded one, else
 *   exit Stale (the host imports in full: nothing of the user's is lost that a full import would not
 *   replace anyway, as the guest has not diverged from an import);
 * - HEAD is the imported commit (no commits or checkouts made in the guest), the working tree
 *   (tracked and untracked, not ignored files) equals the import base's tree and the index equals
 *   HEAD (nothing staged), else exit Conflict with the changed paths on stdout (NUL-terminated, at
 *   most MAX_CONFLICT_PATHS);
 * - HEAD is on the host's branch (or detached, like the host's), else exit Stale.
 * The tar is read to its end before any of these exits, so the host's stream always completes. The script
 * starts before the host has planned what to send (resync.ts runResync): an empty archive, sent when there is
 * no re-sync after all, fails the unpacking after the checks, with nothing changed (exit BadArchive).
 *
 * The tar is unpacked into a staging directory inside the workspace's .git while the checks run. Then: the
 * new commits are indexed (`--fix-thin`: their deltas may refer to objects the guest has), the deleted paths
 * are removed (and directories they leave empty), the tree is copied in from the staging directory (`cp -a
 * --remove-destination`, so a symlink is copied as a symlink and replaces whatever file was there; where a
 * directory and a file trade places, the written paths are removed first, whatever they are), and when HEAD
 * moved the branch moves to the new HEAD and `git reset --mixed` makes the index equal it (re-hashing only
 * files whose stat data changed). With HEAD where it was, the index (checked equal to HEAD) stays as it is.
 * Ignored files in the guest (build outputs) stay, unlike a full import.
 * `mise trust --all` runs again, last, when the archive carries TAR_TRUST_MISE (a mise config was written).
 *
 * The new import base: when the archive carries one the host made (TAR_BASE, base-objects.ts: the trees and
 * commit of the host's manifest, the blobs of the files sent, sent only when every file sent hashes to the
 * manifest's id), its objects came straight into `.git/objects` with the archive, the import base's index takes the host's
 * entries and IMPORT_BASE_REF moves to its commit, beside the copying of the files. Otherwise the guest
 * makes it as a full import does: the check's index updated for the paths written and deleted, `git
 * write-tree`, a commit, the index kept (recordImportBase).
 *
 * Every process costs tens of milliseconds in an emulated guest, and a re-sync of one edited file
 * should cost a small part of a full import: so the workspace's refs are read from their files, the check
 * is one `git status` against the import base's index, the unpacking runs beside the check, the host lists
 * the written paths and makes the new base, the git identity is set only when the host's changed since the
 * last import, and the staging directory is removed after the script has answered.
 */
export function buildResyncScript(o: ResyncScriptOptions): string {
  validateGuestPath(o.guestPath);
  if (!STAGE_NAME.test(o.stage))
    throw new BangerError(ErrorCode.InvalidArgument, `invalid re-sync staging directory ${JSON.stringify(o.stage)}`);
  for (const c of [o.baseCommit, o.baseTree, o.oldHead, o.newHead]) {
    if (c !== null && !HEX.test(c)) throw new BangerError(ErrorCode.InvalidArgument, `invalid object id ${JSON.stringify(c)}`);
  }
  const X = WorkspaceScriptExit;
  return `${PRELUDE}dest=${shq(o.guestPath)}
old_base=${shq(o.baseCommit)}
base_tree=${shq(o.baseTree)}
old_head=${shq(o.oldHead ?? '')}
new_head=${shq(o.newHead ?? '')}
branch=${shq(o.branch ?? '')}
user_name=${shq(o.identity.name ?? '')}
user_email=${shq(o.identity.email ?? '')}
stage=
untar=
# The staging directory (and the check's files beside it, $stage.*) is inside .git, out of sight of git and the
# user, so it is removed after the script has answered.
cleanup() {
  unbeat
  if [ -n "$untar" ]; then kill "$untar" 2>/dev/null || true; fi
  if [ -n "$stage" ]; then rm -rf -- "$stage" "$stage".* </dev/null >/dev/null 2>&1 & fi
}
trap cleanup EXIT
trap 'exit 130' HUP INT TERM
beat
# A full import moves every file into place (a rename changes its ctime), so the stat data git keeps
# would name every file changed and git would hash the whole tree, twice: compare without ctime (mode,
# size, mtime and inode still count) in this script's git commands; the user's own git is unchanged.
export ${NO_CTIME_ENV}
${GUEST_CHANGES_FN}# Read the rest of the archive (the unpacking started at once reads it), then stop.
stop() {
  rc=$1; shift
  if [ -n "$untar" ]; then wait "$untar" || true; untar=; else cat >/dev/null; fi
  fail "$rc" "$*"
}

cd -- "$dest" 2>/dev/null || stop ${X.Stale} "no workspace at $dest"
{ [ -d .git ] && [ ! -L .git ]; } || stop ${X.Stale} "$dest has no git repository"
# A killed re-sync's staging directory goes.
for d in .git/${RESYNC_STAGE_PREFIX}*; do if [ -e "$d" ]; then rm -rf -- "$d" </dev/null >/dev/null 2>&1 & fi; done
stage="$dest/.git/${o.stage}"
# The archive is unpacked in .git (pack.ts ImportTarSource.stageDir): the staging directory and the import base's
# objects, straight into the object store. (A command run in the background reads /dev/null unless told
# otherwise: the archive goes to it as fd 3.)
exec 3<&0
LC_ALL=C.UTF-8 tar -x -f - -C .git --no-same-owner --no-same-permissions --no-overwrite-dir --warning=no-timestamp <&3 3<&- &
untar=$!
exec 3<&-
# The import base, HEAD's commit and HEAD's branch: read from their ref files, a git process costing tens of
# milliseconds; a ref that is not a file of its own (packed) or holds no commit id is asked of git.
${REF_ID_FN}h=; IFS= read -r h < .git/HEAD || true
case $h in
  'ref: refs/heads/'*) sym=\${h#ref: }; ref_id "$sym"; cur=$r ;;
  *) sym=; ref_id HEAD; cur=$r ;;
esac
ref_id ${IMPORT_BASE_REF}; base=$r
if [ -z "$base" ] || [ -z "$cur" ]; then
  base=$(git rev-parse -q --verify "${IMPORT_BASE_REF}^{commit}") || stop ${X.Stale} "$dest has no import base"
  cur=$(git rev-parse -q --verify 'HEAD^{commit}' || true)
  sym=$(git symbolic-ref -q HEAD || true)
fi
[ "$base" = "$old_base" ] || stop ${X.Stale} "$dest was imported again since the recorded import"
guest_changes "$stage" "$base" "$old_head" "$cur" "$base_tree" > "$stage.changes"
if [ -s "$stage.changes" ]; then
  n=$(tr -cd '\\000' < "$stage.changes" | wc -c)
  sort -zu "$stage.changes" | head -z -n ${MAX_CONFLICT_PATHS}
  stop ${X.Conflict} "$n changes made in the guest would be overwritten"
fi
if [ -n "$branch" ]; then want="refs/heads/$branch"; else want=; fi
[ "$sym" = "$want" ] || stop ${X.Stale} "the guest's branch is not the host's"

rc=0; wait "$untar" || rc=$?
untar=
[ "$rc" = 0 ] || fail ${X.BadArchive} "the workspace archive could not be unpacked safely"
{ [ -d "$stage/${TAR_TREE_DIR}" ] && [ ! -L "$stage/${TAR_TREE_DIR}" ] && [ -f "$stage/${TAR_DELETED}" ] && [ -f "$stage/${TAR_WRITTEN}" ]; } ||
  fail ${X.BadArchive} "the re-sync archive lacks ${TAR_TREE_DIR}/, ${TAR_DELETED} or ${TAR_WRITTEN}"
# The import base the host made (pack.ts TAR_BASE: every file sent is what the host's manifest says), or none.
host_base=; tree=
if [ -f "$stage/${TAR_BASE}" ]; then
  IFS=' ' read -r host_base tree < "$stage/${TAR_BASE}" || true
  case "$host_base:$tree" in *[!0-9a-f:]*|:*|*:) fail ${X.BadArchive} "the re-sync archive's ${TAR_BASE} is not two object ids" ;; esac
  [ -f "$stage/${TAR_INDEX_INFO}" ] || fail ${X.BadArchive} "the re-sync archive lacks ${TAR_INDEX_INFO}"
fi
# The index of the checked state becomes the new import base's: from here on it describes no base (a re-sync
# killed now leaves none, and the next check hashes the tree instead). The host's entries go into it while the
# files are copied: they carry no stat data, so the next check reads the files they name and compares them with
# the host's object ids (a file the guest changes after this re-sync still counts as changed).
: > ${BASE_INDEX_TREE}
index_job=
if [ -n "$host_base" ]; then
  GIT_INDEX_FILE="$gc_index" git update-index -q --add --remove --replace -z --index-info < "$stage/${TAR_INDEX_INFO}" & index_job=$!
fi
if [ -e "$stage/${TAR_TREE_DIR}/.git" ] || [ -L "$stage/${TAR_TREE_DIR}/.git" ]; then fail ${X.BadArchive} "the workspace archive contains a .git"; fi
if [ -f "$stage/${TAR_HISTORY_PACK}" ]; then git index-pack --stdin --fix-thin < "$stage/${TAR_HISTORY_PACK}" >/dev/null; fi
moved=
if [ -n "$new_head" ] && [ "$new_head" != "$cur" ]; then
  git cat-file -e "$new_head^{commit}" 2>/dev/null || fail ${X.BadArchive} "the re-sync archive's history lacks commit $new_head"
  moved=1
fi

# Deleted paths, then the directories they leave empty; then written paths replace what is there: one copy that
# removes each file (or symlink) it replaces, and where that fails (a directory where a file goes, or the
# other way round), the written paths are removed, whatever they are, and copied again.
if [ -s "$stage/${TAR_DELETED}" ]; then
  xargs -0 -r rm -rf -- < "$stage/${TAR_DELETED}"
  xargs -0 -r sh -c 'for p; do d=$(dirname -- "$p"); if [ "$d" != . ]; then rmdir -p --ignore-fail-on-non-empty -- "$d" 2>/dev/null || true; fi; done' sh < "$stage/${TAR_DELETED}"
fi
# The host's import base: the ref moves to it (git checks the commit is there, its objects came with the archive)
# while the files are copied. (Killed before the files are all in, the workspace is then neither base: the next
# prepare names the files that differ, as it would with the ref moved after them.)
base_job=
if [ -n "$host_base" ]; then git update-ref ${IMPORT_BASE_REF} "$host_base" & base_job=$!; fi
if ! cp -a --remove-destination -- "$stage/${TAR_TREE_DIR}/." "$dest/" 2>/dev/null; then
  xargs -0 -r rm -rf -- < "$stage/${TAR_WRITTEN}"
  cp -a -- "$stage/${TAR_TREE_DIR}/." "$dest/"
fi

# The index as checked (nothing staged), or the one the reset writes, becomes INDEX_MARK.
mark_job=
if [ -n "$moved" ]; then
  if [ -n "$branch" ]; then git update-ref "refs/heads/$branch" "$new_head"; else git update-ref --no-deref HEAD "$new_head"; fi
  git reset -q --mixed
  ln -f -- .git/index ${INDEX_MARK} & mark_job=$!
elif [ -e "$stage.mark" ]; then
  mv -f -- "$stage.mark" ${INDEX_MARK} & mark_job=$!
fi
if [ -n "$user_name" ]; then git config user.name "$user_name"; fi
if [ -n "$user_email" ]; then git config user.email "$user_email"; fi

if [ -n "$host_base" ]; then
  wait "$base_job"
  base=$host_base
  wait "$index_job"
  ${keepBaseIndex('"$gc_index"')}  ${PRINT_TREE}else
  # The import base: the check's index (the old imported state) updated for the paths deleted and written.
  if [ -s "$stage/${TAR_DELETED}" ]; then GIT_INDEX_FILE="$gc_index" git update-index -q --force-remove -z --stdin < "$stage/${TAR_DELETED}"; fi
  GIT_INDEX_FILE="$gc_index" git update-index -q --add --remove --replace -z --stdin < "$stage/${TAR_WRITTEN}"
  tree=$(GIT_INDEX_FILE="$gc_index" git write-tree)
${recordImportBase('new_head', '"$gc_index"')}fi
if [ -n "$mark_job" ]; then wait "$mark_job" || true; fi
${SYNC_WORKSPACE}if [ -f "$stage/${TAR_TRUST_MISE}" ]; then
${MISE_TRUST}fi
printf '%s\\n' "$base"
`;
}
