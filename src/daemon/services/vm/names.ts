import { randomInt } from 'node:crypto';
import { invalidArgument } from '../../../errors/index.js';
import { VM_NAME_RE } from '../../../protocol/names.js';


export function validateVmName(name: string): string {
  if (!VM_NAME_RE.test(name)) {
    throw invalidArgument(
      `invalid VM name ${JSON.stringify(name)}: use 1-63 lowercase letters, digits and hyphens, not starting or ending with a hyphen`,
      'for example `--name fix-42`',
    );
  }
  return name;
}

const ADJECTIVES = ['brisk', 'calm', 'eager', 'fuzzy', 'gentle', 'jolly', 'keen', 'lucid', 'mellow', 'nimble', 'quiet', 'rapid', 'sturdy', 'tidy', 'vivid', 'witty'];
const NOUNS = ['otter', 'falcon', 'badger', 'heron', 'lynx', 'marmot', 'newt', 'orca', 'panda', 'quail', 'raven', 'stoat', 'tapir', 'vole', 'wombat', 'yak'];

/** A readable name not in `taken`. */
export function generateVmName(taken: (name: string) => boolean): string {
  for (let i = 0; i < 200; i++) {
    const name = `${ADJECTIVES[randomInt(ADJECTIVES.length)]}-${NOUNS[randomInt(NOUNS.length)]}-${randomInt(100)}`;
    if (!taken(name)) return name;
  }
  return `vm-${randomInt(1e9).toString(36)}`;
}

export function randomMac(): string {
  const b = Array.from({ length: 3 }, () => randomInt(256).toString(16).padStart(2, '0'));
  return `52:54:00:${b.join(':')}`;
}
