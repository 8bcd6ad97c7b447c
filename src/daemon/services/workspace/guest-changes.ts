
/**
 * The guest-change check of the workspace scripts: what was changed in a workspace since banger imported it
 * (GUEST_CHANGES_FN), and the import base's index that makes it one `git status` (BASE_INDEX_PREFIX).
 */

/** At most this many changed paths are named when guest changes refuse an import or a re-sync. */
export const MAX_CONFLICT_PATHS = 50;

/**
 * The import base's index: an index file of the import base's tree whose stat data are those of the files
 * the import (or re-sync) left, named `BASE_INDEX_PREFIX<tree id>` in the workspace's .git. With it, telling
 * whether the working tree still equals the import base is one `git status` that compares stat data (and
 * reads only the files whose stat data changed) instead of a hash of the whole tree. The tree id in the
 * name ties the file to the import base it describes: a script killed between moving the import base ref
 * and renaming the file leaves no file for the new base, and the next check takes the slow way.
 */
export const BASE_INDEX_PREFIX = '.git/banger-base-index-';

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
  return `${NO_CTIME_ENV} GIT_INDEX_FILE="$${indexVar}" \\
  git -c core.untrackedCache=true status --porcelain -z --no-renames --ignore-submodules=dirty --untracked-files=normal`;
}

/**
 * Shell function `guest_changes DIR BASE HEAD CUR TREE`, run in a workspace: prints (NUL-separated) what was
 * changed in the guest since the import recorded as commit BASE (its tree TREE, empty when unknown) of HEAD
 * (empty: no commits), CUR being the workspace's HEAD commit now (empty: none; the caller reads it, with what
 * else it needs, in one git process): a pseudo-path when HEAD moved (commits or a checkout), then the
 * working-tree paths (tracked and untracked, not ignored) that differ from BASE's tree (an untracked
 * directory is named once, with a trailing slash), then staged paths. Staging directories an interrupted
 * import left are not changes. It sets gc_index to an index file of the working tree's state (when that
 * equals BASE's): the import base's index, or DIR/index.
 *
 * With the import base's index (BASE_INDEX_PREFIX) this is `git status` against that index, while the
 * staged paths are listed beside it: the guest has two vCPUs, and every git process costs a tenth of a
 * second under emulation. (Both write to the output; each git process writes its short list as it exits.)
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
  if [ -n "$4" ]; then
    ${NO_CTIME_ENV} git diff-index -z --cached --name-only --no-renames HEAD &
    gc_staged=$!
  else git ls-files -z; fi
  gc_bi="${BASE_INDEX_PREFIX}$5"
  if [ -n "$5" ] && [ -f "$gc_bi" ] && [ ! -L "$gc_bi" ]; then
    gc_index=$gc_bi
    ${baseStatus('gc_index')} > "$1/status"
    # Index-to-HEAD entries (the first column) are the import's own edits; the second column and "??" are the
    # guest's, but for staging directories.
    if [ -s "$1/status" ]; then sed -z -n -E '/^[?][?] [.]banger-import[.]/d; s/^([?][?] |.[^ ] )//p' "$1/status"; fi
  else
    gc_index=$1/index
    if [ -f .git/index ]; then cp -- .git/index "$1/index"; else rm -f -- "$1/index"; fi
    ${NO_CTIME_ENV} GIT_INDEX_FILE="$1/index" git add -A -- ':(top)' ':(top,exclude).banger-import.*'
    gc_tree=$(GIT_INDEX_FILE="$1/index" git write-tree)
    git diff-tree -r -z --name-only --no-renames "$2^{tree}" "$gc_tree"
  fi
  if [ -n "$gc_staged" ]; then wait "$gc_staged"; fi
}
`;

/**
 * Shell that keeps the index file `file` (of the tree `$tree`, its stat data those of the files now in the
 * workspace) as the import base's index (BASE_INDEX_PREFIX), and removes any other (a killed script's). Runs
 * in the workspace's root after recordImportBase.
 */
export function keepBaseIndex(file: string): string {
  return `keep="${BASE_INDEX_PREFIX}$tree"
mv -f -- ${file} "$keep"
for f in ${BASE_INDEX_PREFIX}*; do if [ -e "$f" ] && [ "$f" != "$keep" ]; then rm -f -- "$f"; fi; done
`;
}
