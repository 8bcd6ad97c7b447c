import { z } from 'zod';
import { method, withProgress } from './common.js';

/** RPC methods of `banger vm workspace`: importing a host checkout into a VM and exporting the guest's changes. */

/** A host git checkout imported into a VM (`banger vm workspace prepare`). */
export const workspaceInfoSchema = z.object({
  /** Absolute directory of the workspace in the guest. */
  guestPath: z.string(),
  /** Top-level directory of the host checkout it came from. */
  sourcePath: z.string(),
  /** The host's HEAD commit at import time; null for a repository without commits. */
  headCommit: z.string().nullable(),
  /** The guest commit recording the imported state; exports diff against it. */
  baseCommit: z.string(),
  includeUntracked: z.boolean(),
  preparedAt: z.string(),
});
export type WorkspaceInfo = z.infer<typeof workspaceInfoSchema>;

export const workspacePrepareParamsSchema = z.object({
  /** VM name. */
  name: z.string().min(1),
  /** Absolute path of the host checkout (or a directory inside it). */
  sourcePath: z.string().min(1),
  /** Absolute guest directory; default /root/<repo name>. */
  guestPath: z.string().min(1).optional(),
  includeUntracked: z.boolean().optional(),
  /**
   * Replace the workspace with a full import even when the guest has changes a re-sync would refuse
   * to overwrite (guest edits, commits, staged files).
   */
  force: z.boolean().optional(),
  /** A full import even when a re-sync (only what changed since the last import) is possible. */
  full: z.boolean().optional(),
  ...withProgress,
});
export type WorkspacePrepareParams = z.infer<typeof workspacePrepareParamsSchema>;

export const workspacePrepareResultSchema = z.object({
  vm: z.string(),
  workspace: workspaceInfoSchema,
  /** Files and symlinks imported (a re-sync: written), and their bytes. */
  files: z.number(),
  bytes: z.number(),
  /**
   * 'full': the workspace was replaced with a full import; 'resync': only what changed since the
   * last import was sent (`files` written, `deleted` removed). Absent from older daemons: 'full'.
   */
  mode: z.enum(['full', 'resync']).optional(),
  /** Re-sync: paths removed from the workspace. */
  deleted: z.number().optional(),
  /** Untracked files left out (no --include-untracked). */
  skippedUntracked: z.number(),
  /** Lines for the user: untracked files skipped, submodules, mise. */
  notices: z.array(z.string()),
});
export type WorkspacePrepareResult = z.infer<typeof workspacePrepareResultSchema>;

export const workspaceExportParamsSchema = z.object({
  name: z.string().min(1),
  /** Diff against this guest commit-ish instead of the import base. */
  baseCommit: z.string().min(1).optional(),
  /** Only the changed-file list, no patch. */
  nameOnly: z.boolean().optional(),
});
export type WorkspaceExportParams = z.infer<typeof workspaceExportParamsSchema>;

export const workspaceChangeSchema = z.object({
  /** git's --name-status letter: A added, D deleted, M modified, T type changed. */
  status: z.string(),
  /** Written by the guest: escape it before a terminal sees it. */
  path: z.string(),
  /** Lines added and removed in this file, counted on the host from the patch (absent with nameOnly). */
  linesAdded: z.number().int().nonnegative().optional(),
  linesRemoved: z.number().int().nonnegative().optional(),
  /** A binary change: no line counts. */
  binary: z.boolean().optional(),
});
export type WorkspaceChange = z.infer<typeof workspaceChangeSchema>;

export const workspaceExportResultSchema = z.object({
  guestPath: z.string(),
  /** The patch, base64 (binary-safe; `git apply`-able at the host repo's top level). Empty with nameOnly. */
  patch: z.string(),
  files: z.array(workspaceChangeSchema),
});
export type WorkspaceExportResult = z.infer<typeof workspaceExportResultSchema>;

export const workspaceCompareParamsSchema = z.object({
  /** The VMs whose workspaces are put side by side (forks of one VM, usually). */
  names: z.array(z.string().min(1)).min(1).max(64),
  /** A shell command line run in each workspace at once (under `mise exec` when the guest has mise). */
  check: z.string().min(1).optional(),
  /** How long each check may run (default 600 s); past it the check is stopped and reported as timed out. */
  checkTimeoutSeconds: z.number().int().positive().max(86_400).optional(),
});
export type WorkspaceCompareParams = z.infer<typeof workspaceCompareParamsSchema>;

export const workspaceCheckSchema = z.object({
  /** The check's exit code (128+N after signal N); null when it timed out or could not run. */
  code: z.number().int().nullable(),
  timedOut: z.boolean(),
  seconds: z.number(),
  /** The last bytes of its output, stdout and stderr as they came (written by the guest: escape before printing). */
  outputTail: z.string(),
});
export type WorkspaceCheck = z.infer<typeof workspaceCheckSchema>;

export const workspaceCompareEntrySchema = z.object({
  vm: z.string(),
  /** Why this VM's workspace could not be compared (not running, no workspace...); nothing else is set then. */
  error: z.string().optional(),
  guestPath: z.string().optional(),
  /** The guest commit its export diffs against: forks of one VM share it. */
  baseCommit: z.string().optional(),
  files: z.array(workspaceChangeSchema),
  linesAdded: z.number().int(),
  linesRemoved: z.number().int(),
  /** Size of its patch (what `workspace export` prints). */
  patchBytes: z.number().int(),
  check: workspaceCheckSchema.optional(),
});
export type WorkspaceCompareEntry = z.infer<typeof workspaceCompareEntrySchema>;

export const workspaceCompareResultSchema = z.object({
  /** One entry per VM, in the order asked. */
  vms: z.array(workspaceCompareEntrySchema),
  /** Every compared workspace diffs against the same base commit (their patches apply to the same tree). */
  sameBase: z.boolean(),
});
export type WorkspaceCompareResult = z.infer<typeof workspaceCompareResultSchema>;

export const WorkspaceMethods = {
  prepare: method('vm.workspace.prepare', workspacePrepareParamsSchema, workspacePrepareResultSchema),
  export: method('vm.workspace.export', workspaceExportParamsSchema, workspaceExportResultSchema),
  compare: method('vm.workspace.compare', workspaceCompareParamsSchema, workspaceCompareResultSchema),
} as const;
