import { readFileSync } from 'node:fs';
import type { Paths } from '../shared/paths.js';
import { BUILD_ID } from '../shared/version.js';

/**
 * True when the daemon's build file names this build and the daemon's pid (a daemon of an older build
 * writes no build file, but does write its pid file): then no daemon.status round trip is needed.
 */
export function servedByThisBuild(paths: Paths): boolean {
  try {
    const [pid, build] = readFileSync(paths.daemonBuildFile, 'utf8').trim().split(' ');
    return build === BUILD_ID && pid === readFileSync(paths.daemonPidFile, 'utf8').trim();
  } catch {
    return false;
  }
}
