/**
 * What shell completion knows about the CLI, read from the commander program tree (so it follows the real
 * commands, flags and arguments) and encoded as short tokens the generated scripts interpret.
 *
 * What a positional argument or an option value completes to comes from its name:
 *   `<vm>`      VM names (which ones: VM_FILTERS, by command)
 *   `<image>`   image names
 *   `<session>` session names of the VM given by the command's `<vm>` argument
 *   choices     the choices (`.choices([...])`)
 *   anything else: files (bash and fish fall back to file names; zsh too through bashcompinit)
 * Names are fetched from a running daemon at TAB time by `banger __complete KIND [ARG]` (see names.ts).
 */
import type { Argument, Command, Option } from 'commander';

/** Which VMs a `<vm>` argument offers. */
export type VmFilter = 'any' | 'running' | 'stopped';

/**
 * The commands whose `<vm>` wants a VM in a given state, by command path prefix (the first match wins);
 * every other `<vm>` (show, logs, restart, delete...) offers all VMs.
 */
export const VM_FILTERS: readonly [path: string, filter: VmFilter][] = [
  ['vm start', 'stopped'],
  ['vm exec', 'running'],
  ['vm ssh', 'running'],
  ['vm stop', 'running'],
  ['vm stats', 'running'],
  ['vm ports', 'running'],
  ['vm session', 'running'],
  ['vm workspace', 'running'],
  ['vm sync', 'running'],
];

/**
 * A completion kind as a token: `vm`, `vm:running`, `vm:stopped`, `image`, `session`, `files`, or
 * `one-of:a,b,c`. A positional list's last token ends in `...` when it repeats (a variadic argument).
 */
export type KindToken = string;

export interface CompletionNode {
  /** Every spelling of the command's path below `banger` ('' for the program itself), aliases included. */
  spellings: string[];
  /** Canonical names of its subcommands, in --help order. */
  subcommands: string[];
  /** Every flag spelling (`-t`, `--tty`), `-h`/`--help` included. */
  flags: string[];
  /** Flags that take a value, with what the value completes to. */
  valueFlags: { flag: string; kind: KindToken }[];
  /** What each positional argument completes to, in order. */
  args: KindToken[];
}

/** Command and flag names and choices must be plain words: the scripts embed them unquoted. */
const SAFE_WORD = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;
const SAFE_FLAG = /^--?[A-Za-z0-9][A-Za-z0-9-]*$/;

function safe(re: RegExp, s: string, what: string): string {
  if (!re.test(s)) throw new Error(`completion: ${what} '${s}' is not a plain word`);
  return s;
}

export function vmFilterFor(path: string): VmFilter {
  return VM_FILTERS.find(([p]) => path === p || path.startsWith(`${p} `))?.[1] ?? 'any';
}

/** What a value named `name` (an argument's or an option's placeholder) completes to in command `path`. */
export function kindOf(name: string, choices: readonly string[] | undefined, path: string): KindToken {
  if (choices && choices.length > 0) return `one-of:${choices.map((c) => safe(SAFE_WORD, c, 'choice')).join(',')}`;
  if (name === 'vm') {
    const f = vmFilterFor(path);
    return f === 'any' ? 'vm' : `vm:${f}`;
  }
  if (name === 'image' || name === 'session') return name;
  return 'files';
}

/** The placeholder of an option's value: `image` for `--image <image>`. */
function valueName(o: Option): string {
  return /[<[]([^>\]]+)[>\]]/.exec(o.flags)?.[1]?.replace(/\.\.\.$/, '') ?? '';
}

function argToken(a: Argument, path: string, last: boolean): KindToken {
  const kind = kindOf(a.name(), a.argChoices, path);
  return last && a.variadic ? `${kind}...` : kind;
}

/**
 * The completion nodes of a program: the program itself, then every command below it, depth first.
 * Options bound to a value (`--image <image>`) complete their value; a `--` anywhere ends completion of
 * banger's own words (what follows is the guest command).
 */
export function completionNodes(program: Command): CompletionNode[] {
  const nodes: CompletionNode[] = [];
  const visit = (cmd: Command, spellings: string[], path: string): void => {
    const flags: string[] = [];
    const valueFlags: { flag: string; kind: KindToken }[] = [];
    for (const o of cmd.options) {
      if (o.hidden) continue;
      const spelled = [o.short, o.long].filter((f): f is string => !!f).map((f) => safe(SAFE_FLAG, f, 'flag'));
      flags.push(...spelled);
      if (o.required || o.optional) {
        const kind = kindOf(valueName(o), o.argChoices, path);
        for (const flag of spelled) valueFlags.push({ flag, kind });
      }
    }
    flags.push('-h', '--help');
    const args = cmd.registeredArguments.map((a, i, all) => argToken(a, path, i === all.length - 1));
    const subs = cmd.commands.filter((c) => !(c as unknown as { _hidden?: boolean })._hidden);
    nodes.push({ spellings, subcommands: subs.map((c) => safe(SAFE_WORD, c.name(), 'command')), flags, valueFlags, args });
    for (const c of subs) {
      const names = [c.name(), ...c.aliases()].map((n) => safe(SAFE_WORD, n, 'command'));
      const childPath = path ? `${path} ${c.name()}` : c.name();
      visit(
        c,
        spellings.flatMap((s) => names.map((n) => (s ? `${s} ${n}` : n))),
        childPath,
      );
    }
  };
  visit(program, [''], '');
  return nodes;
}
