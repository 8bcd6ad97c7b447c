/** The daemon runs host commands with the one runner in shared/ (the CLI uses it too). */
export {
  DEFAULT_MAX_OUTPUT_BYTES,
  exitCodeOfSignal,
  runCommand,
  type CommandRunner,
  type RunOptions,
  type RunResult,
} from '../shared/command.js';
