import { readFile, rm, writeFile, rename } from 'node:fs/promises';
import type { VmHandle } from '../../vmm/driver.js';

/** handles.json: what a restarted daemon needs to find a VM's live process again. */
export interface VmRuntime extends VmHandle {
  /** Guest ports forwarded on the VM's host address right now (loopback networking). */
  forwards?: number[];
  /** The guest said at boot that its agent is up: talk to it (else SSH only). */
  agent?: boolean;
}

export async function writeHandles(path: string, h: VmRuntime): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, JSON.stringify(h, null, 2) + '\n', { mode: 0o600 });
  await rename(tmp, path);
}

export async function readHandles(path: string): Promise<VmRuntime | undefined> {
  try {
    const h = JSON.parse(await readFile(path, 'utf8')) as Partial<VmRuntime>;
    if (typeof h.pid !== 'number' || typeof h.startTime !== 'number' || !h.vmm || !h.controlSocketPath || !h.accel)
      return undefined;
    return h as VmRuntime;
  } catch {
    return undefined;
  }
}

export async function removeRuntimeFiles(paths: string[]): Promise<void> {
  await Promise.all(paths.map((p) => rm(p, { force: true })));
}
