/**
 * The CLI's entry: `vm exec VM -- COMMAND` and `vm workspace prepare VM REPO` take fast paths that load neither
 * commander nor the RPC and schema libraries (fast-exec.ts, fast-prepare.ts); everything else, and whatever
 * those paths decline, runs the full program.
 */
const args = process.argv.slice(2);
let code: number | null = null;
if (args[0] === 'vm' && args[1] === 'exec') {
  const { tryFastExec } = await import('./fast-exec.js');
  code = await tryFastExec(args);
} else if (args[0] === 'vm' && args[1] === 'workspace' && args[2] === 'prepare') {
  const { tryFastPrepare } = await import('./fast-prepare.js');
  code = await tryFastPrepare(args);
}
if (code === null) await import('./program.js');
else {
  const exit = code;
  process.exitCode = exit;
  // Flush stdout/stderr, then leave even if a stray handle (stdin) is still open.
  process.stdout.write('', () => process.stderr.write('', () => process.exit(exit)));
}
