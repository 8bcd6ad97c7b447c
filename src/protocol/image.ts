import { z } from 'zod';
import { IMAGE_STATUSES, method, withProgress } from './common.js';

/** RPC methods of `banger image`: the root filesystems, kernels and initrds VMs boot from. */

export const imageFileInfoSchema = z.object({
  role: z.enum(['kernel', 'initrd', 'rootfs']),
  path: z.string(),
  sizeBytes: z.number(),
  sha256: z.string(),
});
export type ImageFileInfo = z.infer<typeof imageFileInfoSchema>;

export const imageInfoSchema = z.object({
  id: z.string(),
  name: z.string(),
  status: z.enum(IMAGE_STATUSES),
  kernelVersion: z.string().nullable(),
  files: z.array(imageFileInfoSchema),
  params: z.object({
    suite: z.string(),
    mirror: z.string(),
    packages: z.array(z.string()),
    /** Version of banger's guest contract (init, agent) the image was built with; absent in early images. */
    guestContract: z.number().optional(),
    /** Built with `--minimal`: without the developer packages (Docker, build-essential...). */
    minimal: z.boolean().optional(),
    /** What it holds: versions of notable packages (docker.io, gcc, nodejs...) and of mise. */
    contents: z.object({ versions: z.record(z.string()), mise: z.string().nullable() }).optional(),
    /** Seconds each build step took. */
    stepSeconds: z.array(z.object({ step: z.string(), seconds: z.number() })).optional(),
  }),
  createdAt: z.string(),
  buildSeconds: z.number().nullable(),
  /** Names of VMs whose disks are layered on this image. */
  usedBy: z.array(z.string()),
  error: z.string().nullable(),
});
export type ImageInfo = z.infer<typeof imageInfoSchema>;

export const imageBuildParamsSchema = z.object({
  name: z.string().min(1),
  packages: z.array(z.string()).optional(),
  /** Only the base set (sshd, git, mise, the agent's runtime) plus `packages`: no Docker or toolchain. */
  minimal: z.boolean().optional(),
  /** Rebuild even when an image of that name exists (refused while VMs use it). */
  force: z.boolean().optional(),
  /** Bootstrap from nothing instead of from a cached base layer (a fresh layer is saved). */
  noCache: z.boolean().optional(),
  ...withProgress,
});
export type ImageBuildParams = z.infer<typeof imageBuildParamsSchema>;

export const imageRefSchema = z.object({ name: z.string().min(1) });

export const ImageMethods = {
  build: method('image.build', imageBuildParamsSchema, imageInfoSchema),
  list: method('image.list', null, z.array(imageInfoSchema)),
  show: method('image.show', imageRefSchema, imageInfoSchema),
  delete: method('image.delete', imageRefSchema, z.object({ deleted: z.string() })),
} as const;
