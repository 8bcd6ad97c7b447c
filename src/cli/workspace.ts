import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { WorkspaceMethods, type WorkspacePrepareResult } from '../protocol/workspace.js';
import {
  formatDryRun,
  inspectRepo,
  listImportFiles,
  listNotices,
} from '../shared/workspace-files.js';
import { runCommand } from '../shared/command.js';
import type { CliContext } from './context.js';
import { out } from './output.js';
import { preparedLines } from './workspace-result.js';

export interface PrepareRequest {
  vm: string;
  /** The host checkout as the user typed it (resolved against the current directory). */
  repo: string;
  guestPath?: string;
  includeUntracked?: boolean;
  json?: boolean;
  /** Replace the workspace even when the guest has changes (a full import). */
  force?: boolean;
  /** A full import even when a re-sync is possible. */
  full?: boolean;
}

/**
 * `--dry-run`: what an import would carry, read on this host with no daemon and no VM. Prints the
 * listing (or the list as JSON) on stdout and the untracked-files notice on stderr.
 */
export async function dryRunImport(ctx: CliContext, req: Omit<PrepareRequest, 'vm'>): Promise<void> {
  const repo = await inspectRepo(resolve(req.repo), runCommand, ctx.signal);
  const list = await listImportFiles(repo.root, { includeUntracked: !!req.includeUntracked }, runCommand, ctx.signal);
  const guestPath = req.guestPath ?? `/root/${repo.name}`;
  if (req.json) {
    out.json({ sourcePath: repo.root, guestPath, headCommit: repo.headCommit, ...list });
  } else {
    out.line(formatDryRun(list.entries));
    out.info(`dry run: ${repo.root} would be imported to ${guestPath}; nothing was changed`);
  }
  for (const n of listNotices(list)) out.info(n);
}

/** Imports a host checkout into a running VM through the daemon, showing progress and notices. */
export async function prepareWorkspace(ctx: CliContext, req: PrepareRequest): Promise<WorkspacePrepareResult> {
  const r = await ctx.call(
    WorkspaceMethods.prepare,
    {
      name: req.vm,
      sourcePath: resolve(req.repo),
      guestPath: req.guestPath,
      includeUntracked: req.includeUntracked,
      force: req.force,
      full: req.full,
    },
    { json: req.json, progress: true },
  );
  for (const l of preparedLines(r)) out.info(l);
  return r;
}

/** Whether a `vm run` positional names a host repo rather than the guest command. */
export function looksLikeRepo(arg: string): boolean {
  if (arg.startsWith('./') || arg.startsWith('../') || arg.startsWith('/') || arg === '.' || arg === '..') return true;
  try {
    return existsSync(arg) && statSync(arg).isDirectory();
  } catch {
    return false;
  }
}
