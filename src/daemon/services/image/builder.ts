import { join } from 'node:path';
import type { Paths } from '../../../shared/paths.js';
import type { Logger } from '../../../shared/logger.js';
import type { CommandRunner } from '../../../shared/command.js';
import { buildImage, readHostMirror } from './build.js';
import { LayerCache } from './layers.js';
import { GUEST_CONTRACT_VERSION } from '../../guest/init/contract.js';
import type { ImageBuilder } from './service.js';

/**
 * The ImageBuilder the daemon uses: Debian bookworm from the host's own apt mirror. `userNs`: set when the
 * daemon is not root (a rootless build, see rootless.ts; base layers are not used then).
 */
export function imageBuilder(d: { run: CommandRunner; log: Logger; paths: Paths; userNs?: CommandRunner | undefined }): ImageBuilder {
  return async (req, outDir, progress, signal) => {
    const mirror = await readHostMirror();
    const params = {
      name: req.name,
      packages: req.packages,
      minimal: req.minimal,
      suite: 'bookworm',
      mirror,
      aptCacheDir: join(d.paths.cacheDir, 'apt-archives'),
      noCache: req.noCache,
    };
    const log = d.log.child({ image: req.name });
    const layers = new LayerCache({ dir: join(d.paths.cacheDir, 'layers'), run: d.run, log });
    const art = await buildImage(
      params,
      outDir,
      { run: d.run, log, ...(d.userNs ? { userNs: d.userNs } : { layers }) },
      (s) => progress({ kind: 'step', step: s.name, index: s.index, total: s.total, detail: s.detail }),
      signal,
    );
    return {
      kernelVersion: art.kernelVersion,
      files: art.files,
      params: {
        suite: params.suite,
        mirror,
        packages: req.packages,
        minimal: req.minimal,
        guestContract: GUEST_CONTRACT_VERSION,
        contents: art.contents,
        stepSeconds: art.stepSeconds,
      },
    };
  };
}
