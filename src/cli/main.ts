/**
 * The CLI's entry: `vm exec VM -- COMMAND` takes a fast path that loads neither commander nor the RPC and
 * schema libraries (fast-exec.ts); everything else, and whatever that path declines, runs the full program.
 */
const args = process.argv.slice(2);
let code: number | null = null;
if (args[0] === 'vm' && args[1] === 'exec') {
  const { tryFastExec } = await import('./fast-exec.js');
  code = await tryFastExec(args);
}
if (code === null) await import('./program.js');
else {
  const exit = code;
  process.exitCode = exit;
  // Flush stdout/stderr, then leave even if a stray handle (stdin) is still open.
  process.stdout.write('', () => process.stderr.write('', () => process.exit(exit)));
}
