/** The host-checkout side of a workspace import lives in shared/ so the CLI's `--dry-run` lists files the same way. */
export * from '../../../shared/workspace-files.js';
