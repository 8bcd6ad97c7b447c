/** Quotes one word for a POSIX shell: safe for any bytes, including spaces, quotes and newlines. */
export function shq(word: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Quotes an argv into one command line. */
export function shJoin(argv: readonly string[]): string {
  return argv.map(shq).join(' ');
}

/**
 * `install_changed SRC DEST MODE` (POSIX sh function): DEST becomes a root-owned copy of SRC with MODE. A DEST
 * that is a regular file already holding SRC's bytes is left in place, its owner and mode put back: a VM
 * starts (and syncs) many times, and a file rewritten each time would grow its copy-on-write disk.
 * Otherwise the copy is made beside DEST and renamed over it, so DEST is whole at every instant and a
 * symlink at DEST is replaced, never followed. SRC is left as it is.
 */
export const INSTALL_CHANGED_FN = `install_changed() {
  if [ ! -L "$2" ] && cmp -s "$1" "$2"; then
    chown 0:0 "$2" && chmod "$3" "$2"
  else
    install -o 0 -g 0 -m "$3" "$1" "$2.banger-new.$$" && mv -fT "$2.banger-new.$$" "$2"
  fi
}
`;
