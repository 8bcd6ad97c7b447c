import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { WorkspaceMethods, type WorkspaceChange, type WorkspaceCompareResult } from '../../../protocol/workspace.js';
import { parseIntFlag, type CliContext } from '../../context.js';
import { out, table } from '../../output.js';
import { escapeForTerminal } from '../../../shared/terminal-text.js';
import { dryRunImport, prepareWorkspace } from '../../workspace.js';

/**
 * The changed-file list of an export for a person: `STATUS<TAB>path` lines, or bare paths with nameOnly.
 * Status letters and paths come from the guest's git, so they are escaped for the terminal.
 */
export function changedFileLines(files: readonly WorkspaceChange[], nameOnly: boolean): string[] {
  return files.map((f) => (nameOnly ? escapeForTerminal(f.path) : `${escapeForTerminal(f.status)}\t${escapeForTerminal(f.path)}`));
}

/** `workspace compare` for a person: one row per VM, then (with files) each VM's changed files. */
export function compareLines(r: WorkspaceCompareResult, withFiles: boolean): string[] {
  const checked = r.vms.some((v) => v.check);
  const rows = r.vms.map((v) => {
    if (v.error !== undefined) return [escapeForTerminal(v.vm), '-', '-', '-', ...(checked ? ['-'] : []), `error: ${escapeForTerminal(v.error)}`];
    const check = !v.check ? [] : [v.check.timedOut ? `timed out (${v.check.seconds} s)` : `exit ${v.check.code} (${v.check.seconds} s)`];
    return [escapeForTerminal(v.vm), String(v.files.length), `+${v.linesAdded}`, `-${v.linesRemoved}`, ...check, ''];
  });
  const lines = table(['VM', 'FILES', 'ADDED', 'REMOVED', ...(checked ? ['CHECK'] : []), ''], rows).split('\n');
  if (withFiles)
    for (const v of r.vms.filter((x) => x.files.length > 0)) {
      lines.push('', `${escapeForTerminal(v.vm)}:`);
      for (const f of v.files)
        lines.push(`  ${escapeForTerminal(f.status)}  ${f.binary ? 'binary' : `+${f.linesAdded ?? 0} -${f.linesRemoved ?? 0}`}  ${escapeForTerminal(f.path)}`);
    }
  return lines;
}

interface PrepareFlags {
  guestPath?: string;
  includeUntracked?: boolean;
  dryRun?: boolean;
  json?: boolean;
  force?: boolean;
  full?: boolean;
}

export function register(vm: Command, ctx: CliContext): void {
  const ws = vm.command('workspace').description('import a host git checkout into a VM, and export the changes made there');

  ws.command('prepare')
    .description(
      "import a git checkout's tracked files (uncommitted edits included) and recent history into a running VM",
    )
    .argument('<vm>', 'VM name')
    .argument('<repo>', 'path of the host git checkout')
    .option('--guest-path <path>', 'absolute directory in the guest (default /root/<repo name>)')
    .option('--include-untracked', 'import untracked files too (ignored files are never imported)')
    .option('--dry-run', 'list what would be imported, with modes and sizes; needs no VM or daemon')
    .option('--json', 'print the result as JSON')
    .option('--force', 'replace the workspace even when it has changes made in the guest (they are lost)')
    .option('--full', 'import everything again, even when only what changed could be sent')
    .addHelpText(
      'after',
      `
The guest workspace is a git repository at the host's HEAD with the host's uncommitted edits on top.
A second prepare of the same checkout into the same guest path sends only what changed since the last
one (a re-sync: changed and deleted files, new commits). A prepare that cannot re-sync (another
checkout or branch, --full) replaces the workspace with a full import. Either way it refuses, naming
the files, when the workspace has changes made in the guest (edits, staged files, commits): export
them first, or pass --force to replace them.
Export the guest's changes with \`banger vm workspace export\`.`,
    )
    .action(async (name: string, repo: string, o: PrepareFlags) => {
      if (o.dryRun) {
        await dryRunImport(ctx, { repo, guestPath: o.guestPath, includeUntracked: o.includeUntracked, json: o.json });
        return;
      }
      const r = await prepareWorkspace(ctx, {
        vm: name,
        repo,
        guestPath: o.guestPath,
        includeUntracked: o.includeUntracked,
        json: o.json,
        force: o.force,
        full: o.full,
      });
      if (o.json) out.json(r);
    });

  ws.command('compare')
    .description("put several VMs' workspace changes side by side: files, lines added and removed, a check's exit code")
    .argument('<vm...>', 'VM names (forks of one VM, say)')
    .option('--check <command>', 'run this shell command in each workspace at once and show its exit code')
    .option('--check-timeout <seconds>', 'stop a check that runs longer (default 600)', (v) => parseIntFlag('--check-timeout', v))
    .option('--files', "list each VM's changed files too")
    .option('--json', 'print the result as JSON (with the last 4 KiB of each check\'s output)')
    .addHelpText(
      'after',
      `
For picking one of several attempts (agents in forks of one VM): each VM's changes since its import,
and with --check whether a command (tests, a linter) passes there. The checks run at the same time,
in the workspace (under mise exec where a mise config applies). Take the one you want with
\`banger vm workspace export VM | git apply\` in the host repo.
Exits 1 when a VM could not be compared (its row says why); a failing check is a result, not an error.

Example:
  banger vm fork dev --count 3 --name try
  ...run an agent in each...
  banger vm workspace compare try-1 try-2 try-3 --check 'npm test'`,
    )
    .action(async (names: string[], o: { check?: string; checkTimeout?: number; files?: boolean; json?: boolean }) => {
      const r = await ctx.call(WorkspaceMethods.compare, { names, check: o.check, checkTimeoutSeconds: o.checkTimeout });
      if (o.json) out.json(r);
      else {
        for (const line of compareLines(r, !!o.files)) out.line(line);
        if (!r.sameBase && r.vms.filter((v) => !v.error).length > 1)
          out.info('note: these workspaces were not imported from the same base: their patches apply to different trees');
      }
      if (r.vms.some((v) => v.error !== undefined)) ctx.exitCode = 1;
    });

  ws.command('export')
    .description("print the workspace's changes since the import as a patch (`| git apply` in the host repo)")
    .argument('<vm>', 'VM name')
    .option('-o, --output <file>', 'write the patch to this file instead of stdout')
    .option('--base-commit <ref>', 'diff against this guest commit instead of the imported state')
    .option('--name-only', 'print only the changed paths, one a line')
    .action(async (name: string, o: { output?: string; baseCommit?: string; nameOnly?: boolean }) => {
      const r = await ctx.call(WorkspaceMethods.export, { name, baseCommit: o.baseCommit, nameOnly: !!o.nameOnly });
      if (o.nameOnly) {
        for (const line of changedFileLines(r.files, true)) out.line(line);
        return;
      }
      const patch = Buffer.from(r.patch, 'base64');
      if (o.output !== undefined) await writeFile(o.output, patch);
      else out.raw(patch);
      for (const line of changedFileLines(r.files, false)) out.info(line);
      out.info(
        r.files.length === 0
          ? `no changes in ${name}:${r.guestPath}`
          : `${r.files.length} changed ${r.files.length === 1 ? 'file' : 'files'}${o.output !== undefined ? `; patch written to ${o.output}` : ''}`,
      );
    });
}
