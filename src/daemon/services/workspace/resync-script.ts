import { BangerError, ErrorCode } from '../../../errors/index.js';
import { shq } from '../../guest/shell.js';
import type { GitIdentity } from './host-repo.js';
import {
  GUEST_CHANGES_FN,
  IMPORT_BASE_REF,
  MAX_CONFLICT_PATHS,
  MISE_TRUST,
  PRELUDE,
  SYNC_WORKSPACE,
  recordImportBase,
  WorkspaceScriptExit,
  validateGuestPath,
} from './guest-scripts.js';
import { TAR_DELETED, TAR_HISTORY_PACK, TAR_TREE_DIR } from './pack.js';

export interface ResyncScriptOptions {
  guestPath: string;
  /** The import base commit the last import recorded (WorkspaceInfo.baseCommit). */
  baseCommit: string;
  /** HEAD at the last import; null for a repository without commits. */
  oldHead: string | null;
  /** The host's HEAD now. */
  newHead: string | null;
  /** The host's branch now; null when HEAD is detached. */
  branch: string | null;
  identity: GitIdentity;
  /** Run `mise trust --all` (a re-sync writes a mise config file; see mayBeMiseConfig). */
  trustMise: boolean;
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
 * (TAR_DELETED) and a thin pack of the new commits. Prints the new import base commit on stdout.
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
 * The tar is read to its end before any of these exits, so the host's stream always completes.
 *
 * Then: the tar is unpacked into a staging directory inside the workspace, the new commits are
 * indexed (`--fix-thin`: their deltas may refer to objects the guest has), the deleted paths are
 * removed (and directories they leave empty), the changed paths are removed and copied in from the
 * staging directory (`cp -a`, so a symlink is copied as a symlink and a file replaces a directory),
 * the branch moves to the new HEAD, `git reset --mixed` makes the index equal it (re-hashing only
 * files whose stat data changed), and a new import base is recorded exactly as a full import does.
 * Ignored files in the guest (build outputs) stay, unlike a full import.
 */
export function buildResyncScript(o: ResyncScriptOptions): string {
  validateGuestPath(o.guestPath);
  for (const c of [o.baseCommit, o.oldHead, o.newHead]) {
    if (c !== null && !HEX.test(c)) throw new BangerError(ErrorCode.InvalidArgument, `invalid commit ${JSON.stringify(c)}`);
  }
  const X = WorkspaceScriptExit;
  return `${PRELUDE}dest=${shq(o.guestPath)}
old_base=${shq(o.baseCommit)}
old_head=${shq(o.oldHead ?? '')}
new_head=${shq(o.newHead ?? '')}
branch=${shq(o.branch ?? '')}
user_name=${shq(o.identity.name ?? '')}
user_email=${shq(o.identity.email ?? '')}
tmp=
stage=
cleanup() { unbeat; if [ -n "$tmp" ]; then rm -rf -- "$tmp"; fi; if [ -n "$stage" ]; then rm -rf -- "$stage"; fi; }
trap cleanup EXIT
trap 'exit 130' HUP INT TERM
beat
# A full import moves every file into place (a rename changes its ctime), so the stat data git keeps
# would name every file changed and git would hash the whole tree, twice: compare without ctime (mode,
# size, mtime and inode still count) in this script's git commands; the user's own git is unchanged.
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=core.trustctime GIT_CONFIG_VALUE_0=false
${GUEST_CHANGES_FN}# Read the rest of the archive, then stop.
stop() { rc=$1; shift; cat >/dev/null; fail "$rc" "$*"; }

cd -- "$dest" 2>/dev/null || stop ${X.Stale} "no workspace at $dest"
{ [ -d .git ] && [ ! -L .git ]; } || stop ${X.Stale} "$dest has no git repository"
base=$(git rev-parse -q --verify "${IMPORT_BASE_REF}^{commit}") || stop ${X.Stale} "$dest has no import base"
[ "$base" = "$old_base" ] || stop ${X.Stale} "$dest was imported again since the recorded import"
tmp=$(mktemp -d)
guest_changes "$tmp" "$base" "$old_head" > "$tmp/changed"
if [ -s "$tmp/changed" ]; then
  n=$(tr -cd '\\000' < "$tmp/changed" | wc -c)
  sort -zu "$tmp/changed" | head -z -n ${MAX_CONFLICT_PATHS}
  stop ${X.Conflict} "$n changes made in the guest would be overwritten"
fi
if [ -n "$branch" ]; then want="refs/heads/$branch"; else want=; fi
[ "$(git symbolic-ref -q HEAD || true)" = "$want" ] || stop ${X.Stale} "the guest's branch is not the host's"

stage=$(mktemp -d "$dest/.banger-import.XXXXXX")
LC_ALL=C.UTF-8 tar -x -f - -C "$stage" --no-same-owner --no-same-permissions --no-overwrite-dir --warning=no-timestamp ||
  fail ${X.BadArchive} "the workspace archive could not be unpacked safely"
{ [ -d "$stage/${TAR_TREE_DIR}" ] && [ ! -L "$stage/${TAR_TREE_DIR}" ] && [ -f "$stage/${TAR_DELETED}" ]; } ||
  fail ${X.BadArchive} "the re-sync archive lacks ${TAR_TREE_DIR}/ or ${TAR_DELETED}"
if [ -e "$stage/${TAR_TREE_DIR}/.git" ] || [ -L "$stage/${TAR_TREE_DIR}/.git" ]; then fail ${X.BadArchive} "the workspace archive contains a .git"; fi
if [ -f "$stage/${TAR_HISTORY_PACK}" ]; then git index-pack --stdin --fix-thin < "$stage/${TAR_HISTORY_PACK}" >/dev/null; fi
if [ -n "$new_head" ]; then
  git cat-file -e "$new_head^{commit}" 2>/dev/null || fail ${X.BadArchive} "the re-sync archive's history lacks commit $new_head"
fi

# Deleted paths, then the directories they leave empty.
xargs -0 -r rm -rf -- < "$stage/${TAR_DELETED}"
xargs -0 -r sh -c 'for p; do d=$(dirname -- "$p"); if [ "$d" != . ]; then rmdir -p --ignore-fail-on-non-empty -- "$d" 2>/dev/null || true; fi; done' sh < "$stage/${TAR_DELETED}"
# Changed paths: whatever is there now (a file, a symlink, a directory) is replaced.
( cd -- "$stage/${TAR_TREE_DIR}" && find . -mindepth 1 ! -type d -printf '%P\\0' ) > "$tmp/written"
xargs -0 -r rm -rf -- < "$tmp/written"
cp -a -- "$stage/${TAR_TREE_DIR}/." "$dest/"
stage_deleted="$tmp/deleted"
mv -- "$stage/${TAR_DELETED}" "$stage_deleted"
rm -rf -- "$stage"
stage=

if [ -n "$new_head" ]; then
  if [ -n "$branch" ]; then git update-ref "refs/heads/$branch" "$new_head"; else git update-ref --no-deref HEAD "$new_head"; fi
  git reset -q --mixed
fi
if [ -n "$user_name" ]; then git config user.name "$user_name"; fi
if [ -n "$user_email" ]; then git config user.email "$user_email"; fi

# The import base: the check's index (the old imported state) updated for the paths written and deleted.
cat -- "$stage_deleted" >> "$tmp/written"
GIT_LITERAL_PATHSPECS=1 GIT_INDEX_FILE="$tmp/index" xargs -0 -r git add -A -- < "$tmp/written"
tree=$(GIT_INDEX_FILE="$tmp/index" git write-tree)
${recordImportBase('new_head')}
${SYNC_WORKSPACE}${o.trustMise ? MISE_TRUST : ''}printf '%s\\n' "$base"
`;
}
