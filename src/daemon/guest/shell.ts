/** Quotes one word for a POSIX shell: safe for any bytes, including spaces, quotes and newlines. */
export function shq(word: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Quotes an argv into one command line. */
export function shJoin(argv: readonly string[]): string {
  return argv.map(shq).join(' ');
}
