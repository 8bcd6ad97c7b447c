/**
 * The CLI's entry: `vm exec VM -- COMMAND` and `vm workspace prepare VM REPO` take fast paths that load neither
 * commander nor the RPC and schema libraries (fast-exec.ts, fast-prepare.ts); everything else, and whatever
 * those paths decline, runs the full program.
 */
/** A shell's status for a program killed by SIGPIPE. */
const EXIT_ON_EPIPE = 141;
const args = process.argv.slice(2);
// A reader that went away (`banger vm exec VM -- cmd | head`): leave as a program killed by SIGPIPE does, with
// 128+13 and no stack trace. The daemon sees the connection close and ends what it ran for this command.
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(EXIT_ON_EPIPE);
    throw e;
  });
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
