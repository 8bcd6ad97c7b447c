import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Used when the host's apt sources name no Debian mirror (e.g. an Ubuntu or non-Debian host). */
export const DEFAULT_DEBIAN_MIRROR = 'http://deb.debian.org/debian';

const DEBIAN_SUITES = new Set([
  'buster',
  'bullseye',
  'bookworm',
  'trixie',
  'forky',
  'sid',
  'oldstable',
  'stable',
  'testing',
  'unstable',
]);

interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  enabled: boolean;
}

/** One-line format: `deb [opts] URI suite component...`. */
function parseOneLine(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const m = /^(deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
    if (!m?.[1] || !m[2] || !m[3]) continue;
    out.push({ types: [m[1]], uris: [m[2]], suites: [m[3]], enabled: true });
  }
  return out;
}

/** deb822 format (`*.sources`): paragraphs of `Key: value` fields, `#` comment lines. */
function parseDeb822(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const para of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last: string | undefined;
    for (const raw of para.split('\n')) {
      if (raw.startsWith('#')) continue;
      if (/^\s/.test(raw) && last) {
        fields.set(last, `${fields.get(last) ?? ''} ${raw.trim()}`);
        continue;
      }
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(raw);
      if (!m?.[1]) continue;
      last = m[1].toLowerCase();
      fields.set(last, m[2] ?? '');
    }
    const words = (k: string) => (fields.get(k) ?? '').split(/\s+/).filter(Boolean);
    if (!fields.has('uris')) continue;
    out.push({
      types: words('types'),
      uris: words('uris'),
      suites: words('suites'),
      enabled: (fields.get('enabled') ?? 'yes').trim().toLowerCase() !== 'no',
    });
  }
  return out;
}

function score(uri: string, suites: string[]): number {
  if (!/^(https?|file):/.test(uri)) return -1;
  if (/security/.test(uri)) return -1;
  let s = 0;
  if (/\/debian\/?$/.test(uri)) s += 2;
  if (suites.some((x) => DEBIAN_SUITES.has(x))) s += 2;
  return s;
}

/**
 * The host's Debian mirror, from the texts of its apt sources (`/etc/apt/sources.list` and
 * `sources.list.d/*.list` in one-line format, `*.sources` in deb822; the format is detected per text).
 * Picks the first enabled `deb` entry that looks like a Debian archive (a Debian suite name or a URI
 * ending in /debian), never a security archive; {@link DEFAULT_DEBIAN_MIRROR} when there is none.
 */
export function hostMirror(...sourceTexts: string[]): string {
  let best: { uri: string; score: number } | undefined;
  for (const text of sourceTexts) {
    const entries = /^Types:/im.test(text) ? parseDeb822(text) : parseOneLine(text);
    for (const e of entries) {
      if (!e.enabled || !e.types.includes('deb')) continue;
      for (const uri of e.uris) {
        const s = score(uri, e.suites);
        if (s >= 2 && (!best || s > best.score)) best = { uri: uri.replace(/\/+$/, ''), score: s };
      }
    }
  }
  return best?.uri ?? DEFAULT_DEBIAN_MIRROR;
}

/** Reads the host's apt sources under `aptDir` and returns {@link hostMirror} of them. */
export async function readHostMirror(aptDir = '/etc/apt'): Promise<string> {
  const texts: string[] = [];
  const tryRead = async (p: string) => {
    try {
      texts.push(await readFile(p, 'utf8'));
    } catch {
      // absent or unreadable: not a source
    }
  };
  await tryRead(join(aptDir, 'sources.list'));
  let names: string[] = [];
  try {
    names = (await readdir(join(aptDir, 'sources.list.d'))).sort();
  } catch {
    names = [];
  }
  for (const n of names) {
    if (n.endsWith('.list') || n.endsWith('.sources')) await tryRead(join(aptDir, 'sources.list.d', n));
  }
  return hostMirror(...texts);
}
