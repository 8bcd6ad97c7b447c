import { ImageMethods } from '../../../protocol/image.js';
import type { ImageService } from '../../services/image/service.js';
import { handler, type Handler } from '../server.js';

/** image.build, image.list, image.show and image.delete. */
export function imageHandlers(images: ImageService): Handler[] {
  return [
    handler(ImageMethods.build, async (p, ctx) => images.build(p, ctx.progress, ctx.signal)),
    handler(ImageMethods.list, async () => images.list()),
    handler(ImageMethods.show, async (p) => images.show(p.name)),
    handler(ImageMethods.delete, async (p) => images.delete(p.name)),
  ];
}
