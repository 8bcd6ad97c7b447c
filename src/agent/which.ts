import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The shell's `command -v NAME` for a plain name: the first executable file of that name in `path`'s absolute directories. */
export function onPath(name: string, path: string): string | null {
  for (const dir of path.split(delimiter)) {
    if (!dir.startsWith('/')) continue;
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      if (statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return null;
}
