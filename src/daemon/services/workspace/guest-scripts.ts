import { BangerError, ErrorCode } from '../../../errors/index.js';
import { shq } from '../../guest/shell.js';
import type { GitIdentity } from './host-repo.js';
import { TAR_TREE_DIR } from './pack.js';
import { IMPORT_STREAM_MAGIC } from './import-stream.js';
import { GUEST_CHANGES_FN, INDEX_MARK, MAX_CONFLICT_PATHS, baseStatus, keepBaseIndex } from './guest-changes.js';

/**
 * Pure builders of the shell scripts that import a guest workspace and run commands in it, and the parts
 * every workspace script shares (PRELUDE, exit statuses, the import base ref, path checks); the export
 * script is in export-script.ts, the re-sync script in resync-script.ts. Each returns one command line for
 * GuestSession.exec (POSIX sh; the guest is Debian with GNU tar, coreutils and git). Every value from the
 * host is quoted with shq.
 */

/** The ref the import records the imported state under; exports diff against it by default. */
export const IMPORT_BASE_REF = 'refs/banger/import-base';

/** Every line the scripts write to stderr about their own work starts with this. */
export const SCRIPT_STDERR_PREFIX = 'banger-workspace: ';
/** The import's (and re-sync's) stderr line naming the tree it recorded as the import base. */
export const TREE_LINE_PREFIX = `${SCRIPT_STDERR_PREFIX}imported tree `;
/** The import's stderr line about `mise trust` (not installed, or failed) starts with this. */
export const MISE_NOTICE_PREFIX = `${SCRIPT_STDERR_PREFIX}mise: `;

/**
 * Exit statuses of the scripts for their own failures (the message is on stderr, prefixed with
 * SCRIPT_STDERR_PREFIX). Other non-zero statuses come from a command the script ran.
 */
export const WorkspaceScriptExit = {
  /** The import archive could not be unpacked safely, or lacks what the import needs. */
  BadArchive: 80,
  /** The guest path exists and is not an empty directory or a banger workspace. */
  PathInUse: 81,
  /** Export: no workspace (or no recorded import base) at the guest path. */
  NoWorkspace: 82,
  /** Export: the --base-commit does not name a commit in the guest repo. */
  BadBase: 83,
  /** Re-sync: the guest has changes the re-sync would overwrite (their paths on stdout, NUL-terminated). */
  Conflict: 84,
  /** Re-sync: the workspace is not what the last import left (no base, another import): import in full. */
  Stale: 85,
} as const;

/** Checks a guest workspace path: absolute, normalized, not "/". */
export function validateGuestPath(guestPath: string): void {
  const bad = (why: string) =>
    new BangerError(ErrorCode.InvalidArgument, `invalid guest workspace path ${JSON.stringify(guestPath)}: ${why}`, {
      hint: 'pass an absolute path such as /root/work/myproject',
    });
  if (!guestPath.startsWith('/')) throw bad('it must be absolute');
  if (guestPath.includes('\0')) throw bad('it contains a NUL byte');
  if (guestPath === '/' || /^\/+$/.test(guestPath)) throw bad('it cannot be the root directory');
  const parts = guestPath.slice(1).split('/');
  if (parts.some((p) => p === '' || p === '.' || p === '..')) throw bad('it has an empty, "." or ".." component');
}

/** Seconds between the empty stderr lines the import and export scripts write while they work. */
export const HEARTBEAT_SECONDS = 5;

/**
 * `beat` starts a background loop writing an empty line to stderr every HEARTBEAT_SECONDS, so the host
 * can tell a slow step (`git add -A` of a large tree) from a hung guest; `unbeat` (in the EXIT trap)
 * stops it. `sleep` gets no stdout or stderr, so nothing holds the channel open once the script has exited.
 * The loop must end with the script: one left behind keeps stderr open, so the command never ends, and its
 * lines keep the host's idle timeout from ever firing. Hence SIGKILL: dash's subshell holds the parent's
 * traps for a moment after the fork, and a SIGTERM then is lost (two loops in three survived a `beat; unbeat`
 * here). And the loop ends by itself once the script is gone (killed without its EXIT trap).
 */
export const PRELUDE = `set -eu
umask 022
say() { printf '${SCRIPT_STDERR_PREFIX}%s\\n' "$*" >&2; }
fail() { rc=$1; shift; say "$*"; exit "$rc"; }
hb=
beat() { ( while sleep ${HEARTBEAT_SECONDS} </dev/null >/dev/null 2>&1 && kill -0 $$ 2>/dev/null; do printf '\\n' >&2 || exit 0; done ) & hb=$!; }
unbeat() { if [ -n "$hb" ]; then kill -KILL "$hb" 2>/dev/null || true; hb=; fi; }
`;

/**
 * Shell function `ref_id REF`, run at a workspace's top level: sets r to the object id in the file `.git/REF`, or
 * to nothing when REF is not a plain file there (a packed ref, a symlink) or does not hold one object id. A git
 * process costs tens of milliseconds in an emulated guest; the caller asks git when r is empty.
 */
export const REF_ID_FN = `ref_id() {
  r=
  if [ -f ".git/$1" ] && [ ! -L ".git/$1" ]; then IFS= read -r r < ".git/$1" || true; fi
  case $r in *[!0-9a-f]*) r= ;; esac
  case \${#r} in 40|64) ;; *) r= ;; esac
}
`;

/** `mise trust --all` in the current directory ($dest), best effort (see buildImportScript). */
export const MISE_TRUST = `mise_bin=$(command -v mise 2>/dev/null || true)
if [ -z "$mise_bin" ] && [ -x /usr/local/bin/mise ]; then mise_bin=/usr/local/bin/mise; fi
if [ -z "$mise_bin" ]; then
  say "mise: not installed, skipped \\\`mise trust\\\`"
elif "$mise_bin" trust --quiet --all >/dev/null 2>&1; then
  :
else
  say "mise: \\\`mise trust --all\\\` failed (exit $?): run it in $dest to see why"
fi
`;

export interface ImportScriptOptions {
  /** Absolute guest directory of the workspace. */
  guestPath: string;
  /** HEAD's commit on the host, or null for a repository without commits. */
  headCommit: string | null;
  /** The host's branch (also an unborn one); null when HEAD is detached. */
  branch: string | null;
  /** Written to the guest repo's local config when set. */
  identity: GitIdentity;
  /** Replace a workspace that has changes made in the guest (else: exit Conflict naming them). */
  force?: boolean;
}

/** Marks a workspace whose import was interrupted while its files moved in: not guest changes. */
const INCOMPLETE_MARK = '.git/banger-import-incomplete';

/**
 * Flushes the workspace's filesystem before an import reports success, so what the host was told of survives
 * the VM losing power (its QEMU killed, the host crashing). Without it, chaos runs here found, after a stop
 * interrupted by a kill -9, a workspace whose files were on disk and whose import-base ref was not (exit 67
 * on the next import: "not empty and is not a banger workspace").
 */
export const SYNC_WORKSPACE = 'sync -f -- "$dest" 2>/dev/null || sync\n';

/** The longest `unracy_end` waits for the clock (about what git takes to read a second's files again). */
const UNRACY_MAX_WAIT_MS = 250;

/**
 * Shell, run once the checkout has written its files (those the tar brings carry the host's older mtimes): keeps
 * git from reading them back. git (Debian's compares whole seconds) takes an index entry whose file changed in
 * the second the index file was written for "racily clean", and reads and hashes that file on every refresh
 * or status until an index is written in a later second. The checkout writes up to a second of files in the
 * second it writes its index; hashing them again cost the refresh and the untracked-cache primer ~0.3 s each
 * in an emulated guest (4,000 files). Nothing else writes these files meanwhile, so the index files are dated
 * the next second (`stamp`) instead: `unracy FILE...` after each write of one. Before the script reports, the
 * clock must have passed `stamp`, so that a later edit of a file gets another mtime than the one its entry
 * holds (and a later change to a directory another one than its untracked-cache entry): `unracy_end FILE...`
 * waits for it when that is a short wait, else dates the files now, which leaves the last second's files
 * racily clean again (git then reads them once more, as it would have). Dated at the checkout's end, not at
 * the import's: what follows the checkout takes about half a second, so the wait is short or none.
 */
const UNRACY = `stamp=$(( $(date +%s) + 1 ))
unracy() { for f in "$@"; do if [ -f "$f" ]; then touch -c -d "@$stamp" -- "$f"; fi; done; }
unracy_end() {
  left=$(( stamp * 1000000000 - $(date +%s%N) ))
  if [ "$left" -le 0 ]; then return 0; fi
  if [ "$left" -le ${UNRACY_MAX_WAIT_MS * 1e6} ]; then sleep "0.$(printf '%09d' "$left")"; else touch -c -- "$@"; fi
}
`;

/**
 * Shell that records `$tree` as the import base: a commit (parent: the shell variable `headVar`, when set)
 * under IMPORT_BASE_REF, the index file `indexFile` kept as its index (keepBaseIndex; the ref moves
 * meanwhile), and the tree id on stderr for the host. Full imports and re-syncs record it alike.
 */
export function recordImportBase(headVar: string, indexFile: string): string {
  return `if [ -n "$${headVar}" ]; then set -- -p "$${headVar}"; else set --; fi
base=$(GIT_AUTHOR_NAME=banger GIT_AUTHOR_EMAIL=banger@localhost GIT_COMMITTER_NAME=banger GIT_COMMITTER_EMAIL=banger@localhost \\
  git commit-tree "$tree" "$@" -m 'banger import base')
git update-ref ${IMPORT_BASE_REF} "$base" & ref_job=$!
${keepBaseIndex(indexFile)}wait "$ref_job"
${PRINT_TREE}`;
}

/** Shell that tells the host the import base's tree (`$tree`), on stderr. */
export const PRINT_TREE = `printf '%s%s\\n' ${shq(TREE_LINE_PREFIX)} "$tree" >&2
`;

/**
 * The import script. Its stdin is the tar from createImportTar. On success it prints the import
 * base commit id on stdout.
 *
 * Safety: the tar is unpacked into a fresh, empty staging directory inside the workspace directory,
 * never over existing files, so no symlink already in the guest can redirect a write. GNU tar refuses
 * ".." members, strips leading "/", and creates symlinks whose target is absolute or has ".." only
 * once everything else is extracted, so a member cannot be written through a symlink from the same
 * archive either. The host validates every name as well (host-repo.ts validateEntryPath).
 *
 * Git: a repo is created in the staging tree, the history pack is indexed, the host's branch (or a
 * detached HEAD) is set to the host's HEAD commit and `git reset --mixed` makes the index equal HEAD
 * without touching files, so uncommitted host edits show as modifications and imported untracked
 * files as untracked, like on the host. The imported state (HEAD + edits + imported untracked
 * files) is recorded as a commit (parent: HEAD) under IMPORT_BASE_REF, built with a throwaway index,
 * so the user's HEAD, branch and index are what a plain checkout with those edits gives.
 *
 * Re-import replaces the workspace: the guest path must be missing, empty, or a banger workspace
 * (it has IMPORT_BASE_REF); anything else is refused with exit PathInUse. A workspace with changes
 * made in the guest since its import (guest_changes) is refused with exit Conflict, naming them on
 * stdout (NUL-terminated), unless `force`. The previous contents
 * (guest commits, edits, ignored build outputs) are deleted only after the new tree is unpacked and
 * its repo is set up, then the new tree is moved in with renames (same filesystem, so it is quick
 * and also works when the guest path is a mount point). Callers that want to keep guest changes
 * export them first. An import killed at any point (a crashed daemon, a lost connection) leaves a path
 * the next import accepts: at every moment it holds either a .git with an import base or nothing but
 * staging directories, which the next import removes.
 *
 * Last, `mise trust --all` runs in the workspace, best effort: a missing mise or a failure is
 * reported on stderr in a line starting with MISE_NOTICE_PREFIX and does not fail the import.
 */
export function buildImportScript(o: ImportScriptOptions): string {
  validateGuestPath(o.guestPath);
  if (o.headCommit !== null && !/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(o.headCommit)) {
    throw new BangerError(ErrorCode.InvalidArgument, `invalid head commit ${JSON.stringify(o.headCommit)}`);
  }
  return `${PRELUDE}dest=${shq(o.guestPath)}
head=${shq(o.headCommit ?? '')}
branch=${shq(o.branch ?? '')}
user_name=${shq(o.identity.name ?? '')}
user_email=${shq(o.identity.email ?? '')}
force=${o.force ? 1 : 0}
stage=
gc=
# 1 when this import made the guest path: nothing of an earlier workspace or import is there to remove.
fresh=0
worker=
cleanup() { unbeat; if [ -n "$worker" ]; then kill "$worker" 2>/dev/null || true; fi; if [ -n "$stage" ]; then rm -rf -- "$stage"; fi; if [ -n "$gc" ]; then rm -rf -- "$gc"; fi; }
trap cleanup EXIT
trap 'exit 130' HUP INT TERM
beat
${GUEST_CHANGES_FN}
if [ -L "$dest" ] || { [ -e "$dest" ] && [ ! -d "$dest" ]; }; then
  fail ${WorkspaceScriptExit.PathInUse} "$dest exists and is not a directory: pick another workspace path"
fi
if [ -d "$dest" ]; then
  if [ -n "$(find "$dest" -mindepth 1 -maxdepth 1 ! -name '.banger-import.*' -print | head -n 1)" ] &&
     ! git --git-dir="$dest/.git" rev-parse -q --verify ${IMPORT_BASE_REF} >/dev/null 2>&1; then
    fail ${WorkspaceScriptExit.PathInUse} "$dest is not empty and is not a banger workspace: pick another workspace path, or empty it"
  fi
else
  mkdir -p -- "$dest"
  fresh=1
fi
if [ "$force" = 0 ] && [ -d "$dest/.git" ] && [ ! -e "$dest/${INCOMPLETE_MARK}" ] &&
   old_base=$(git --git-dir="$dest/.git" rev-parse -q --verify "${IMPORT_BASE_REF}^{commit}" 2>/dev/null); then
  old_head=$(git --git-dir="$dest/.git" rev-parse -q --verify "$old_base^1" 2>/dev/null || true)
  old_tree=$(git --git-dir="$dest/.git" rev-parse -q --verify "$old_base^{tree}" 2>/dev/null || true)
  gc=$(mktemp -d)
  ( cd -- "$dest" && guest_changes "$gc/gc" "$old_base" "$old_head" "$(git rev-parse -q --verify 'HEAD^{commit}' || true)" "$old_tree" ) > "$gc/changed"
  if [ -s "$gc/changed" ]; then
    n=$(tr -cd '\\000' < "$gc/changed" | wc -c)
    sort -zu "$gc/changed" | head -z -n ${MAX_CONFLICT_PATHS}
    fail ${WorkspaceScriptExit.Conflict} "$n changes made in the guest would be overwritten"
  fi
  rm -rf -- "$gc"
  gc=
fi

stage=$(mktemp -d "$dest/.banger-import.XXXXXX")
mkdir -- "$stage/${TAR_TREE_DIR}"
cd -- "$stage/${TAR_TREE_DIR}"
# A 64-hex HEAD comes from a SHA-256 repository; the guest repo must use the same object format.
if [ "\${#head}" -eq 64 ]; then fmt=sha256; else fmt=sha1; fi
if [ -n "$branch" ]; then git init -q --object-format=$fmt -b "$branch" .; else git -c init.defaultBranch=main init -q --object-format=$fmt .; fi
# A git process costs 50-100 ms in an emulated guest: the few this script can do without, it does without.
packs=.git/objects/pack

# The stream (import-stream.ts): records of a header line and exactly the bytes it announces, then a tar: HEAD's
# index, a small first part, the history, the other parts. A part's files are checked out by one background
# checkout-index, started at the first part, while the history and the next parts arrive: its paths are fed in
# once its pack is in place (git looks for new packs when an object is not in the ones it knows). One process
# reads and writes the index once; one per part cost a second each here for 807 files, most of it the index and
# the packs read again. Sequential (workers=1): parallel checkout writes nothing until its input ends.
bad() { fail ${WorkspaceScriptExit.BadArchive} "the workspace stream $*"; }
num() { case "$1" in *[!0-9]* | '') bad "has a bad length" ;; esac; }
hexid() { case "$1" in *[!0-9a-f]* | '') bad "has a pack that is not named by a hex id" ;; esac; }
take() { head -c "$1" > "$2"; }
# \`wc -c\` of two or more files ends with their total: one process checks what a record's takes wrote (head
# writes less only at the stream's end).
nl='
'
took() { want=$1; shift; got=$(wc -c -- "$@"); got=\${got##*"$nl"}; set -- $got; [ "$1" -eq "$want" ] || bad "ended early"; }
IFS= read -r magic || bad "is empty"
[ "$magic" = ${shq(IMPORT_STREAM_MAGIC)} ] || bad "is not a banger import"
mkfifo "$stage/queue"
start_worker() {
  ( while IFS= read -r id; do cat -- "$stage/$id.paths" || { : > "$stage/checkout-failed"; exit 1; }; done < "$stage/queue" |
      git -c checkout.workers=1 checkout-index -u -z --stdin 2>"$stage/checkout-err" ||
      : > "$stage/checkout-failed" ) &
  worker=$!
  exec 3> "$stage/queue"
}
history=0
indexed=0
# The stream's options record (import-stream.ts FullImportSource): whether the state is HEAD's tree, and whether
# to trust mise configs.
state_is_head=0
trust_mise=1
records=0
kind=
while IFS=' ' read -r kind a b c d; do
  records=$((records + 1))
  case "$kind" in
    options)
      [ "$records" = 1 ] || bad "has options after other records"
      case "$a:$b:$c" in [01]:[01]:) state_is_head=$a; trust_mise=$b ;; *) bad "has bad options" ;; esac ;;
    # HEAD's index, written by the host's git: files are checked out into it part by part (their stat data
    # recorded, so nothing is read back), and only files that come in the tar are hashed by the refresh below.
    index)
      [ -n "$head" ] || bad "has an index for a repository without commits"
      num "$a"; take "$a" .git/index; took "$a" .git/index /dev/null
      indexed=1 ;;
    shallow) num "$a"; if [ "$a" -gt 0 ]; then take "$a" .git/shallow; took "$a" .git/shallow /dev/null; fi ;;
    pack | part)
      hexid "$a"; num "$b"; num "$c"
      take "$b" "$packs/pack-$a.pack"
      take "$c" "$packs/incoming-$a"
      if [ "$kind" = pack ]; then
        took $((b + c)) "$packs/pack-$a.pack" "$packs/incoming-$a"
        mv -- "$packs/incoming-$a" "$packs/pack-$a.idx"
        [ -n "$head" ] || bad "has history for a repository without commits"
        if [ -n "$branch" ]; then set -- "refs/heads/$branch"; else set -- --no-deref HEAD; fi
        git update-ref "$@" "$head" 2>/dev/null || bad "lacks commit $head"
        history=1
      else
        [ "$indexed" = 1 ] || bad "has files before their index"
        num "$d"; take "$d" "$stage/$a.paths"
        took $((b + c + d)) "$packs/pack-$a.pack" "$packs/incoming-$a" "$stage/$a.paths"
        mv -- "$packs/incoming-$a" "$packs/pack-$a.idx"
        if [ -z "$worker" ]; then start_worker; fi
        printf '%s\n' "$a" >&3
      fi ;;
    tar) break ;;
    *) bad "has an unknown record" ;;
  esac
done
[ "$kind" = tar ] || bad "ended early"
if [ -n "$head" ] && [ "$history" = 0 ]; then bad "has no git history"; fi
# The checkouts finish before the tar's files are written: both would create the same directories.
if [ -n "$worker" ]; then
  exec 3>&-
  wait "$worker" || true
  worker=
fi
${UNRACY}if [ -e "$stage/checkout-failed" ]; then
  fail 1 "checking out the imported files failed: $(tail -n 3 "$stage/checkout-err" | tr '\n' ' ')"
fi
# The host never sends a .git (validateEntryPath); --exclude keeps one from reaching the repository anyway.
LC_ALL=C.UTF-8 tar -x -f - -C "$stage" --exclude=.git --no-same-owner --no-same-permissions --no-overwrite-dir --warning=no-timestamp ||
  fail ${WorkspaceScriptExit.BadArchive} "the workspace archive could not be unpacked safely"
# The imported state is recorded in a copy of the checkout's index, without touching the real one. Beside it, the
# identity goes into .git/config.
idx="$stage/base-index"
if [ -f .git/index ]; then cp -- .git/index "$idx"; fi
( if [ -n "$user_name" ]; then git config user.name "$user_name"; fi
  if [ -n "$user_email" ]; then git config user.email "$user_email"; fi ) & config_job=$!
if [ "$state_is_head" = 0 ]; then GIT_INDEX_FILE="$idx" git add -A; fi
tree=$(GIT_INDEX_FILE="$idx" git write-tree)
${recordImportBase('head', '"$idx"')}wait "$config_job"
# Replace the workspace contents with the new tree. The order keeps the path importable again if this is
# killed at any point: the old files go while the old .git (with its import base) stays; the two .git
# directories are swapped by renames; only then do the new files move in. Both .git directories carry
# INCOMPLETE_MARK meanwhile, so the files missing then are not taken for changes made in the guest.
cd /
if [ -d "$dest/.git" ] && [ ! -L "$dest/.git" ]; then : > "$dest/${INCOMPLETE_MARK}"; fi
if [ "$fresh" = 0 ]; then find "$dest" -mindepth 1 -maxdepth 1 ! -name "\${stage##*/}" ! -name .git -exec rm -rf -- {} +; fi
if [ -e "$dest/.git" ] || [ -L "$dest/.git" ]; then mv -- "$dest/.git" "$stage/old.git"; fi
: > "$stage/${TAR_TREE_DIR}/${INCOMPLETE_MARK}"
mv -- "$stage/${TAR_TREE_DIR}/.git" "$dest/.git"
set --
for f in "$stage/${TAR_TREE_DIR}"/* "$stage/${TAR_TREE_DIR}"/.[!.]* "$stage/${TAR_TREE_DIR}"/..?*; do
  if [ -e "$f" ] || [ -L "$f" ]; then set -- "$@" "$f"; fi
done
if [ $# -gt 0 ]; then mv -t "$dest" -- "$@"; fi
rm -rf -- "$dest/${INCOMPLETE_MARK}" "$stage"
stage=

cd -- "$dest"
unracy .git/index "$keep"
# git's untracked cache goes into the import base's index while the filesystem flushes (the guest has two
# vCPUs and the flush waits on the disk): the first re-sync's check then reads no directory that did not change.
( ${baseStatus('keep')} >/dev/null 2>&1 || true; unracy "$keep" ) & primer=$!
# Beside them the real index is refreshed (here, not before the files moved: git would rename its lock file
# into a directory that moved): the files moved to the top level have a new ctime.
refresh_job=
if [ -n "$head" ]; then { git update-index -q --refresh >/dev/null; unracy .git/index; } & refresh_job=$!; fi
${SYNC_WORKSPACE}if [ -n "$refresh_job" ]; then wait "$refresh_job"; fi
# The index the refresh wrote equals HEAD: INDEX_MARK names it (the next check runs no diff-index while it is).
if [ -f .git/index ]; then ln -f -- .git/index ${INDEX_MARK}; fi
wait "$primer"
if [ "$trust_mise" = 1 ]; then
${MISE_TRUST}fi
unracy_end .git/index "$keep"
printf '%s\\n' "$base"
`;
}
