const NAMED_ESCAPES: Record<string, string> = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', '\x1b': '\\e' };

/**
 * A string from a guest (file names, process names, error text), made safe to print: C0 and C1 control
 * characters, DEL, and Unicode line separators and bidirectional overrides are shown as visible escapes
 * (`\e`, `\n`, `\x07`, `\u202e`), so the guest cannot move the cursor, erase lines, retitle the terminal or
 * reorder what is shown. Backslashes are doubled so the rendering is unambiguous. Human output only:
 * `--json` prints the exact strings.
 */
export function escapeForTerminal(s: string): string {
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  return s.replace(/[\\\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const named = NAMED_ESCAPES[c];
    if (named !== undefined) return named;
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}
