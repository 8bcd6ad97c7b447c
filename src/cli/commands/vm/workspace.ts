import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { WorkspaceMethods, type WorkspaceChange } from '../../../protocol/workspace.js';
import type { CliContext } from '../../context.js';
import { out } from '../../output.js';
import { escapeForTerminal } from '../../../shared/terminal-text.js';
import { dryRunImport, prepareWorkspace } from '../../workspace.js';

/**
 * The changed-file list of an export for a person: `STATUS<TAB>path` lines, or bare paths with nameOnly.
 * Status letters and paths come from the guest's git, so they are escaped for the terminal.
 */
export function changedFileLines(files: readonly WorkspaceChange[], nameOnly: boolean): string[] {
  return files.map((f) => (nameOnly ? escapeForTerminal(f.path) : `${escapeForTerminal(f.status)}\t${escapeForTerminal(f.path)}`));
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
