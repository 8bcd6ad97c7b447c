import { CommanderError } from 'commander';
import { EXIT_CODES, isBangerError } from '../errors/index.js';
import { Paths } from '../shared/paths.js';
import { CliContext } from './context.js';
import { out, printBangerError } from './output.js';
import { COMMANDS, rootCommand, type CommandModule } from './commands/table.js';

/** The command modules a command line needs: its first word's, none for --version, all otherwise. */
function commandsFor(args: readonly string[]): (() => Promise<CommandModule>)[] {
  const first = args.find((a) => !a.startsWith('-'));
  if (first === undefined && (args.includes('--version') || args.includes('-V'))) return [];
  const named = COMMANDS.find(([names]) => first !== undefined && names.includes(first));
  return named ? [named[1]] : COMMANDS.map(([, load]) => load);
}

const EXIT_HELP = `
Exit codes:
  vm run / vm exec / vm ssh exit with the guest command's own exit code. banger's own failures use:
  64 invalid argument   65 not found       66 already exists   67 failed precondition
  68 conflict           69 unavailable     70 timed out        71 out of resources
  72 not implemented    125 internal error 130 cancelled (Ctrl-C)
  141 the output's reader went away (\`... | head\`), as SIGPIPE would end any program

Environment:
  BANGER_HOME   state directory (default /var/lib/banger for root, else $XDG_DATA_HOME/banger)

Start here:
  banger vm run -- uname -a     boot a microVM (building the default image on first use) and run a command
  banger doctor                 check what this host supports`;

/**
 * `banger __complete KIND [ARG]` (hidden; what the completion scripts run at TAB time): names from a daemon
 * that is already running, nothing otherwise, always exit 0. It builds no commander program and loads no
 * command module.
 */
async function complete(args: string[]): Promise<number> {
  const { completeNames } = await import('./completion/names.js');
  const names = await completeNames(args, Paths.fromEnv().socket).catch(() => []);
  out.raw(names.map((n) => `${n}\n`).join(''));
  return 0;
}

async function main(argv: string[]): Promise<number> {
  if (argv[2] === '__complete') return complete(argv.slice(3));
  const ac = new AbortController();
  let interrupted = 0;
  const ctx = new CliContext(ac.signal);
  process.on('SIGINT', () => {
    interrupted++;
    const forward = ctx.onInterrupt;
    if (forward && interrupted === 1) return forward();
    if (interrupted > (forward ? 2 : 1)) process.exit(EXIT_CODES.Cancelled);
    ac.abort();
  });
  const program = rootCommand()
    .showSuggestionAfterError()
    .enablePositionalOptions()
    .exitOverride()
    .addHelpText('after', EXIT_HELP);
  for (const m of await Promise.all(commandsFor(argv.slice(2)).map((load) => load()))) m.register(program, ctx);
  for (const c of program.commands) c.enablePositionalOptions?.();

  try {
    await program.parseAsync(argv);
    return ctx.exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return EXIT_CODES.InvalidArgument;
    }
    if (isBangerError(e)) return printBangerError(e);
    out.error(`internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    out.info('hint: this is a bug in banger; `banger daemon logs` may say more');
    return EXIT_CODES.Internal;
  } finally {
    ctx.close();
  }
}

const code = await main(process.argv);
process.exitCode = code;
// Flush stdout/stderr, then leave even if a stray handle (stdin) is still open.
process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
