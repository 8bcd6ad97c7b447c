/**
 * Firecracker boots an uncompressed ELF kernel (vmlinux), while distributions ship a compressed bzImage
 * (Debian's /boot/vmlinuz-*). This module tells them apart and extracts the ELF from a bzImage, the way
 * the kernel tree's scripts/extract-vmlinux does: find the compressed payload, decompress it, check the
 * result is an ELF.
 */
import { spawn } from 'node:child_process';
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { gunzipSync, constants as zlibConstants } from 'node:zlib';
import { BangerError, ErrorCode } from '../../errors/index.js';

export type KernelFormat = 'elf' | 'bzImage' | 'unknown';

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
/** The x86 boot protocol's header signature, at offset 0x202 of a bzImage. */
const BZIMAGE_MAGIC = Buffer.from('HdrS', 'latin1');
const BZIMAGE_MAGIC_OFFSET = 0x202;

/** Tells an ELF kernel from a bzImage by their first bytes (at least 0x206 of them for a bzImage). */
export function detectKernelFormat(head: Buffer): KernelFormat {
  if (head.subarray(0, 4).equals(ELF_MAGIC)) return 'elf';
  if (head.subarray(BZIMAGE_MAGIC_OFFSET, BZIMAGE_MAGIC_OFFSET + 4).equals(BZIMAGE_MAGIC)) return 'bzImage';
  return 'unknown';
}

/** The first `length` bytes of a file (fewer when it is shorter): what the format checks read of a kernel. */
export async function readHead(path: string, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/**
 * Throws a BangerError unless `kernelPath` is an ELF kernel Firecracker can boot; a bzImage gets a hint
 * saying how to extract the vmlinux from it.
 */
export async function checkFirecrackerKernel(kernelPath: string): Promise<void> {
  let head: Buffer;
  try {
    head = await readHead(kernelPath, 0x210);
  } catch (e) {
    throw new BangerError(ErrorCode.NotFound, `kernel image ${kernelPath} cannot be read: ${(e as Error).message}`, {
      hint: 'rebuild the image with `banger image build`',
      cause: e,
    });
  }
  const format = detectKernelFormat(head);
  if (format === 'elf') return;
  if (format === 'bzImage')
    throw new BangerError(
      ErrorCode.FailedPrecondition,
      `kernel ${kernelPath} is a compressed bzImage; Firecracker boots only an uncompressed ELF vmlinux`,
      {
        hint: 'extract the vmlinux from it (banger: extractVmlinux; the kernel tree: scripts/extract-vmlinux) and boot that',
      },
    );
  throw new BangerError(
    ErrorCode.FailedPrecondition,
    `kernel ${kernelPath} is neither an ELF vmlinux nor a bzImage; Firecracker boots only an uncompressed ELF vmlinux`,
  );
}

export type Compression = 'gzip' | 'xz' | 'zstd' | 'lz4' | 'bzip2' | 'lzma' | 'lzo';

/** Stream signatures, as scripts/extract-vmlinux searches for them. */
const SIGNATURES: readonly { compression: Compression; magic: Buffer }[] = [
  { compression: 'gzip', magic: Buffer.from([0x1f, 0x8b, 0x08]) },
  { compression: 'xz', magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) },
  { compression: 'zstd', magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]) },
  { compression: 'lz4', magic: Buffer.from([0x02, 0x21, 0x4c, 0x18]) },
  { compression: 'bzip2', magic: Buffer.from('BZh', 'latin1') },
  { compression: 'lzma', magic: Buffer.from([0x5d, 0x00, 0x00, 0x00]) },
  { compression: 'lzo', magic: Buffer.from([0x89, 0x4c, 0x5a, 0x4f]) },
];

/** Host decompressors reading stdin and writing stdout. gzip is done in-process with node:zlib. */
const TOOLS: Record<Exclude<Compression, 'gzip'>, { cmd: string; args: string[]; pkg: string }> = {
  xz: { cmd: 'xz', args: ['-dc'], pkg: 'xz-utils' },
  zstd: { cmd: 'zstd', args: ['-dc'], pkg: 'zstd' },
  lz4: { cmd: 'lz4', args: ['-dc'], pkg: 'lz4' },
  bzip2: { cmd: 'bzip2', args: ['-dc'], pkg: 'bzip2' },
  lzma: { cmd: 'xz', args: ['--format=lzma', '-dc'], pkg: 'xz-utils' },
  lzo: { cmd: 'lzop', args: ['-dc'], pkg: 'lzop' },
};

interface Candidate {
  offset: number;
  end: number;
  compression: Compression;
}

/** Where the compressed kernel sits: the boot header's payload fields first, then every signature found. */
export function payloadCandidates(image: Buffer): Candidate[] {
  const out: Candidate[] = [];
  const compressionAt = (off: number) =>
    SIGNATURES.find((s) => image.subarray(off, off + s.magic.length).equals(s.magic))?.compression;

  if (detectKernelFormat(image) === 'bzImage' && image.length >= 0x250 && image.readUInt16LE(0x206) >= 0x208) {
    const setupSects = image[0x1f1] || 4;
    const offset = (setupSects + 1) * 512 + image.readUInt32LE(0x248);
    const length = image.readUInt32LE(0x24c);
    const compression = compressionAt(offset);
    if (compression && offset + length <= image.length) out.push({ offset, end: offset + length, compression });
  }
  for (const sig of SIGNATURES) {
    for (let i = image.indexOf(sig.magic); i !== -1 && out.length < 64; i = image.indexOf(sig.magic, i + 1)) {
      if (!out.some((c) => c.offset === i)) out.push({ offset: i, end: image.length, compression: sig.compression });
    }
  }
  return out;
}

export interface ExtractResult {
  compression: Compression;
  /** Bytes of the extracted ELF. */
  size: number;
}

/**
 * Extracts the uncompressed ELF kernel from a bzImage into `outPath` (written to a temporary name and renamed,
 * so a failed extraction leaves nothing behind). gzip is decompressed with node:zlib; xz, zstd, lz4, bzip2,
 * lzma and lzo need their host tools (Debian's cloud kernel is lz4: package `lz4`).
 */
export async function extractVmlinux(
  bzImagePath: string,
  outPath: string,
  signal?: AbortSignal,
): Promise<ExtractResult> {
  const image = await readFile(bzImagePath);
  if (detectKernelFormat(image) === 'elf')
    throw new BangerError(ErrorCode.InvalidArgument, `${bzImagePath} is already an ELF vmlinux`);
  const tmp = `${outPath}.tmp-${process.pid}`;
  const missingTools = new Set<string>();
  try {
    for (const cand of payloadCandidates(image)) {
      signal?.throwIfAborted();
      const data = image.subarray(cand.offset, cand.end);
      let ok: boolean;
      if (cand.compression === 'gzip') {
        ok = await gunzipTo(data, tmp);
      } else {
        const tool = TOOLS[cand.compression];
        const res = await pipeThrough(tool.cmd, tool.args, data, tmp, signal);
        if (res === 'missing') {
          missingTools.add(`${tool.cmd} (Debian package ${tool.pkg})`);
          continue;
        }
        ok = true;
      }
      if (ok && (await isElf(tmp))) {
        await rename(tmp, outPath);
        const fh = await open(outPath, 'r');
        const { size } = await fh.stat().finally(() => fh.close());
        return { compression: cand.compression, size };
      }
    }
  } finally {
    await rm(tmp, { force: true });
  }
  throw new BangerError(ErrorCode.FailedPrecondition, `no ELF kernel could be extracted from ${bzImagePath}`, {
    hint:
      missingTools.size > 0
        ? `install ${[...missingTools].join(', ')} and try again`
        : 'the file may not be an x86 bzImage; use a vmlinux built for Firecracker',
  });
}

async function isElf(path: string): Promise<boolean> {
  try {
    return (await readHead(path, 4)).equals(ELF_MAGIC);
  } catch {
    return false;
  }
}

async function gunzipTo(data: Buffer, out: string): Promise<boolean> {
  let plain: Buffer;
  try {
    // A bzImage's gzip stream may be followed by other bytes: flush what decompressed instead of failing.
    plain = gunzipSync(data, { finishFlush: zlibConstants.Z_SYNC_FLUSH });
  } catch {
    return false;
  }
  const fh = await open(out, 'w');
  try {
    await fh.writeFile(plain);
  } finally {
    await fh.close();
  }
  return true;
}

/**
 * Feeds `data` to `cmd` and writes its stdout to `out`. Its exit status is ignored on purpose: decompressors
 * complain about the bytes after the stream, and the ELF check on the output decides.
 */
async function pipeThrough(
  cmd: string,
  args: readonly string[],
  data: Buffer,
  out: string,
  signal?: AbortSignal,
): Promise<'ran' | 'missing'> {
  const fh = await open(out, 'w');
  try {
    return await new Promise<'ran' | 'missing'>((resolve, reject) => {
      const child = spawn(cmd, args, { stdio: ['pipe', fh.fd, 'ignore'], signal });
      child.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') resolve('missing');
        else if (err.name === 'AbortError')
          reject(new BangerError(ErrorCode.Cancelled, 'vmlinux extraction cancelled'));
        else reject(err);
      });
      child.on('close', () => resolve('ran'));
      // The decompressor may exit before reading everything (trailing bytes): ignore EPIPE.
      child.stdin?.on('error', () => undefined);
      child.stdin?.end(data);
    });
  } finally {
    await fh.close();
  }
}

/**
 * The ELF kernel to boot for an image whose kernel is at `kernelPath`: that file when it is an ELF already,
 * else the vmlinux extracted from it into `vmlinux` beside it, once (again when the kernel is newer than it).
 * The extraction writes a temporary name and renames it, so a concurrent or killed one leaves no half file.
 */
export async function elfKernelFor(kernelPath: string, signal?: AbortSignal): Promise<string> {
  if (detectKernelFormat(await readHead(kernelPath, 0x210)) === 'elf') return kernelPath;
  const out = join(dirname(kernelPath), 'vmlinux');
  const [kernel, extracted] = await Promise.all([stat(kernelPath), stat(out).catch(() => undefined)]);
  if (extracted && extracted.mtimeMs >= kernel.mtimeMs) return out;
  await extractVmlinux(kernelPath, out, signal);
  return out;
}
