
/**
 * The guest-change check of the workspace scripts: what was changed in a workspace since banger imported it
 * (GUEST_CHANGES_FN), and the import base's index that makes it one `git status` (BASE_INDEX).
 */

/** At most this many changed paths are named when guest changes refuse an import or a re-sync. */
export const MAX_CONFLICT_PATHS = 50;

/**
 * The import base's index: an index file of the import base's tree whose stat data are those of the files
 * the import (or re-sync) left (or none, for entries a re-sync took from the host: their files are read once),
 * in the workspace's .git. With it, telling whether the working tree still equals the import base is one
 * `git status` that compares stat data (and reads only the files whose stat data changed) instead of a hash
 * of the whole tree. BASE_INDEX_TREE names the tree it describes: it is emptied before the index or the
 * files it describes change and written once they are the new base's, so a script killed in between leaves
 * no index for any base, and the next check takes the slow way.
 */
export const BASE_INDEX = '.git/banger-base-index';
/** The tree id BASE_INDEX describes, one line; empty or missing: none. */
export const BASE_INDEX_TREE = '.git/banger-base-index.tree';
/** Import base indexes of older builds, one per tree (`<this><tree id>`): removed when a base is kept. */
const OLD_BASE_INDEX_PREFIX = '.git/banger-base-index-';

/**
 * A hard link to the workspace's `.git/index` as it was when an import wrote it, or when a check found it
 * equal to HEAD (nothing staged). git replaces the index file (a new inode) whenever it writes it, so while
 * `.git/index` is still this file (\`[ .git/index -ef INDEX_MARK ]\`, a shell builtin) nothing was staged
 * since, and the check runs no `git diff-index --cached`: one git process fewer (a tenth of a second of a
 * guest vCPU under emulation) beside the `git status` of every re-sync.
 */
export const INDEX_MARK = '.git/banger-index.mark';

/**
 * Shell environment assignments that make git compare stat data without ctime (see GUEST_CHANGES_FN), for
 * the workspace scripts' git commands only: the user's own git config is unchanged.
 */
export const NO_CTIME_ENV = 'GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=core.trustctime GIT_CONFIG_VALUE_0=false';

/**
 * Shell: `git status` of the working tree against the index file named by the shell variable `indexVar`,
 * without ctime (see GUEST_CHANGES_FN) and with git's untracked cache in that index. The check and the
 * full import (which fills the cache) run it alike: the cache is kept only for the same options. No pathspec:
 * one turns the untracked cache off.
 */
export function baseStatus(indexVar: string): string {
  // No preload threads: beside a re-sync's unpacking they contend for the guest's two vCPUs (one edited file in
  // a 4,800-file repo, 14 re-syncs each: median 818 ms without them against 870 ms with them).
  return `${NO_CTIME_ENV} GIT_INDEX_FILE="$${indexVar}" \\
  git -c core.untrackedCache=true -c core.preloadIndex=false status --porcelain -z --no-renames --ignore-submodules=dirty --untracked-files=normal`;
}

/**
 * Shell function `guest_changes FILE BASE HEAD CUR TREE`, run in a workspace: prints (NUL-separated) what was
 * changed in the guest since the import recorded as commit BASE (its tree TREE, empty when unknown) of HEAD
 * (empty: no commits), CUR being the workspace's HEAD commit now (empty: none; the caller reads it, with what
 * else it needs, in one git process): a pseudo-path when HEAD moved (commits or a checkout), then the
 * working-tree paths (tracked and untracked, not ignored) that differ from BASE's tree (an untracked
 * directory is named once, with a trailing slash), then staged paths (none when `.git/index` is still
 * INDEX_MARK; otherwise the index as checked is linked as FILE.mark, for the caller to move to INDEX_MARK when
 * the check passed). Staging directories an interrupted import left are not changes. Its own files are named
 * FILE.*. It sets gc_index to an index file of the working tree's state (when that equals BASE's): the import
 * base's index, or FILE.index.
 *
 * With the import base's index (BASE_INDEX) this is `git status` against that index, while the
 * staged paths are listed beside it: the guest has two vCPUs, and every git process costs a tenth of a
 * second under emulation. (Both write to the output; each git process writes its short list as it exits.
 * The filter of the status output starts beside it too.)
 * That index keeps git's untracked cache, so the directories that did not change are not read again.
 * Without it (a workspace an older banger imported) the working tree is hashed into a copy of the index
 * and its tree compared with BASE's.
 * A full import moves every file into place (a rename changes its ctime), so the stat data git keeps would
 * name every file changed and git would hash the whole tree: it compares without ctime (mode, size, mtime
 * and inode still count); the user's own git config is unchanged.
 */
export const GUEST_CHANGES_FN = `guest_changes() {
  if [ "$4" != "$3" ]; then printf '%s\\0' '(HEAD: commits or a checkout made in the guest)'; fi
  gc_staged=
  if [ -z "$4" ]; then git ls-files -z
  elif [ -f .git/index ] && [ .git/index -ef ${INDEX_MARK} ]; then :
  else
    # The index as checked is linked as FILE.mark first: the caller makes it INDEX_MARK once the check passed.
    ( ln -f -- .git/index "$1.mark" 2>/dev/null || true
      ${NO_CTIME_ENV} exec git diff-index -z --cached --name-only --no-renames HEAD ) &
    gc_staged=$!
  fi
  gc_bi=${BASE_INDEX}; gc_bt=
  if [ -f ${BASE_INDEX_TREE} ]; then read -r gc_bt < ${BASE_INDEX_TREE} || true; fi
  if [ -n "$5" ] && [ "$gc_bt" = "$5" ] && [ -f "$gc_bi" ] && [ ! -L "$gc_bi" ]; then
    gc_index=$gc_bi
    # Index-to-HEAD entries (the first column) are the import's own edits; the second column and "??" are the
    # guest's, but for staging directories. (A pipeline's status is its last command's: git's is kept apart.)
    { ${baseStatus('gc_index')} && gc_rc=0 || gc_rc=$?; echo "$gc_rc" > "$1.rc"; } |
      sed -z -n -E '/^[?][?] [.]banger-import[.]/d; s/^([?][?] |.[^ ] )//p'
    gc_rc=; read -r gc_rc < "$1.rc" || true
    [ "$gc_rc" = 0 ] || { say "git status failed in the workspace"; exit 1; }
  else
    gc_index=$1.index
    if [ -f .git/index ]; then cp -- .git/index "$gc_index"; else rm -f -- "$gc_index"; fi
    ${NO_CTIME_ENV} GIT_INDEX_FILE="$gc_index" git add -A -- ':(top)' ':(top,exclude).banger-import.*'
    gc_tree=$(GIT_INDEX_FILE="$gc_index" git write-tree)
    git diff-tree -r -z --name-only --no-renames "$2^{tree}" "$gc_tree"
  fi
  if [ -n "$gc_staged" ]; then wait "$gc_staged"; fi
}
`;

/**
 * Shell that keeps the index file `file` (of the tree `$tree`, its stat data those of the files now in the
 * workspace) as the import base's index (BASE_INDEX, moved there unless it is that file), names its tree
 * (BASE_INDEX_TREE) and removes an older build's. Runs in the workspace's root; sets `keep`.
 */
export function keepBaseIndex(file: string): string {
  return `keep=${BASE_INDEX}
if [ ${file} != "$keep" ]; then : > ${BASE_INDEX_TREE}; mv -f -- ${file} "$keep"; fi
echo "$tree" > ${BASE_INDEX_TREE}
for f in ${OLD_BASE_INDEX_PREFIX}*; do if [ -e "$f" ]; then rm -f -- "$f"; fi; done
`;
}
